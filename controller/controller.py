"""The controller: run-context intake, control loops, decisions, actuation, telemetry.

It runs on its own thread with its own event loop, so nothing it does (a slow decision, a
blocking call, a backend reload) can stall the data plane. It touches the proxy only
through the proxy's ``DataPlane`` seam, and the backend only through the ``Backend``
protocol. ``start``/``stop`` are the one place its thread and tasks begin and end.

What it promises (issue 9, "a control plane that does no harm"):

- it reports only what is in effect: a setting is ``applied`` once read back from the
  backend, otherwise ``not_applied``/``not_applicable`` with the reason, per key
  (``policy_report.py``); an event says ``reconfigured`` only for what was verified;
- it acts on evidence weighed against cost (``decisions.py``), re-reads the backend right
  before acting, never reloads a name a client has replaced, and backs off after a client
  changed the backend itself;
- nothing a client sends can raise in a loop: unreadable facts are dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from inferos.controller import agent_views, backend_stats, policy_report
from inferos.controller import backend as b
from inferos.controller.backend import ActuatorError, Backend, BackendState, Capabilities, Outcome
from inferos.controller.controller_metrics import ControllerMetrics
from inferos.controller.decisions import Costs, Decision, DecisionSettings, Evidence, decide
from inferos.controller.evidence import gather
from inferos.controller.failsafe import FailSafe, FailsafeSettings
from inferos.controller.liveness import BackendLiveness, LivenessSettings
from inferos.controller.load_shedding import LoadShedder
from inferos.controller.loops import ControlLoop
from inferos.controller.policy import Policy, apply_patch, flatten
from inferos.controller.request_stats import RequestStats
from inferos.controller.run_context import RunContext, TokenCounter, derive
from inferos.controller.scheduler_mode import ModeSettings, ModeSwitcher, ends_switch
from inferos.controller.snapshot import BackendSettings, ModeSwitch, PolicySnapshot, SnapshotStore
from inferos.controller.system_sample import SystemSample, SystemSampler
from inferos.controller.telemetry import Telemetry
from inferos.errors import ConfigError
from inferos.proxy.data_plane import DataPlane
from inferos.proxy.pending_context import RequestFacts
from inferos.tasks import TaskGroup

log = logging.getLogger(__name__)
BACKEND_STATS_EVERY_S = 1.0
BACKEND_READ_EVERY_S = 2.0
READ_FAILURES_UNKNOWN = 3
CLIENT_ROUTES = ("load", "unload")
FACTS_BUDGET_S = 0.005
DecideFn = Callable[..., Decision]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    fast_s: float = 0.001
    mid_s: float = 0.010
    slow_s: float = 0.100
    telemetry_s: float = 1.0
    telemetry_dir: Path = Path("logs")
    decide_every_s: float = 10.0
    reconfigure_cooldown_s: float = 60.0
    unshed_after_s: float = 10.0
    failsafe: FailsafeSettings = field(default_factory=FailsafeSettings)
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    mode: ModeSettings = field(default_factory=ModeSettings)
    liveness: LivenessSettings = field(default_factory=LivenessSettings)
    # The key of the engine child Infer-OS runs (ProxySettings.upstream_api_key): the
    # controller's own reads of the upstream (stats, system-info) send it too.
    upstream_api_key: str | None = field(default=None, repr=False)


RECENT_EVENTS = 50


class InjectedFault(RuntimeError):
    """Raised by the mid loop when a fault was injected (``Controller.inject_fault``)."""


class Controller:
    def __init__(self, plane: DataPlane, registry: CollectorRegistry, policy: Policy,
                 settings: ControllerSettings, backend: Backend | None = None,
                 *, stats: RequestStats | None = None,
                 token_counters: dict[str, TokenCounter] | None = None,
                 decide_fn: DecideFn = decide,
                 sampler: Callable[[], SystemSample] | None = None,
                 profiles: Mapping[str, Policy] | None = None) -> None:
        self.plane = plane
        self.settings = settings
        self.backend = backend
        self.stats = stats or RequestStats()
        self.token_counters = token_counters or {}
        self.decide_fn = decide_fn
        self.profiles = profiles
        self._fault_requested = False  # set by inject_fault (test equipment)
        self.sample_fn = sampler or SystemSampler().sample
        self.metrics = ControllerMetrics(registry)
        self.telemetry = Telemetry(settings.telemetry_dir)
        self.failsafe = FailSafe(plane, settings.failsafe, registry, self.event)
        self.shedder = LoadShedder(plane, self.metrics, self.event, settings.unshed_after_s)
        # Whether the backend answers at all; never trips the fail-safe (liveness.py).
        self.liveness = BackendLiveness(plane, settings.liveness, registry, self.event)
        self.modes = ModeSwitcher(settings.mode, self.event)
        self._providers_of: str | None = None  # the upstream modes.providers were read from
        self.snapshots = SnapshotStore(PolicySnapshot(1, policy, BackendSettings(),
                                                      "initial policy"))
        self.metrics.policy_version.set(1)
        self.contexts: collections.deque[RunContext] = collections.deque(maxlen=2048)
        self.facts_dropped = 0
        self._backlog: collections.deque[RequestFacts] = collections.deque(maxlen=4096)
        self._backlog_dropped = 0
        self.last_sample: SystemSample | None = None
        self.last_decision: Decision | None = None
        self.events_written = 0
        # The latest events as written to telemetry, for the dashboard (a deque's append
        # and a copy of it are safe across the controller's and the server's threads).
        self.recent_events: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_EVENTS)
        # What the backend said last (read back), and what became of each key.
        self.state: BackendState | None = None
        self.restart_outcomes: dict[str, Outcome] = {}
        self.live_outcomes: dict[str, Outcome] = {}
        self.live_version: int | None = None
        self.client_changed_at: float | None = None
        self._user_asked: frozenset[str] = frozenset()
        self._decide_now = True
        self._last_decide = 0.0
        self._last_reconfigure = float("-inf")
        self._actuating = False
        self._live_dirty = True
        self._last_backend_stats = float("-inf")
        self._last_read = float("-inf")
        self._read_failures = 0
        self._guard_promotions: int | None = None
        self._http: httpx.AsyncClient | None = None
        self._lock = threading.Lock()  # serializes policy changes from API callers
        self._live_waiters: list[tuple[int, concurrent.futures.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._push_lock: asyncio.Lock | None = None
        self._tasks = TaskGroup()
        self.start_error: BaseException | None = None
        self.loops = [
            ControlLoop("fast", settings.fast_s, self._fast, self.failsafe,
                        self.metrics.loop_jitter),
            ControlLoop("mid", settings.mid_s, self._mid, self.failsafe,
                        self.metrics.loop_jitter),
            ControlLoop("slow", settings.slow_s, self._slow, self.failsafe,
                        self.metrics.loop_jitter),
            ControlLoop("telemetry", settings.telemetry_s, self._telemetry, self.failsafe,
                        self.metrics.loop_jitter),
        ]
        plane.collect_facts = True

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout_s: float = 600) -> None:
        """Starts the controller's thread (and a managed backend); raises what stopped it."""
        ready = threading.Event()
        self.failsafe.heartbeat()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                        name="inferos-controller", daemon=True)
        self._thread.start()
        ready.wait(timeout_s)
        if self.start_error is not None:
            self._thread.join(timeout=60)
            self._thread = None
            raise self.start_error
        self.failsafe.heartbeat()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._push_lock = asyncio.Lock()
        # The fail-safe tells this thread starved (ready, not scheduled) from hung.
        self.failsafe.register_controller_thread()
        if self.backend is not None:
            try:
                self.plane.switch_upstream(await self.backend.start())
                await self._read_backend(force=True)
            except BaseException as exc:
                self.start_error = exc
                ready.set()
                return
        self._tasks.start(self.liveness.run(), name="backend-liveness")
        for control_loop in self.loops:
            self._tasks.start(control_loop.run(), name=f"loop-{control_loop.name}")
        ready.set()
        await self._stopping.wait()
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()
        if self.backend is not None:
            await self.backend.close()

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=60)
        self._thread = None

    # -- inputs -----------------------------------------------------------------------
    def post_run_context(self, context: RunContext) -> None:
        self.contexts.append(context)
        self.metrics.run_contexts.labels("api" if context.seq_len_source == "caller"
                                         else "proxy").inc()

    def set_policy(self, patch: Any) -> PolicySnapshot:
        """All-or-nothing: raises ConfigError naming the field, or publishes a snapshot."""
        with self._lock:
            current = self.snapshots.current
            policy = apply_patch(current.policy, patch, self.profiles)
            switch = None if ends_switch(patch, current.policy, policy) else \
                current.mode_switch
            snapshot = self.snapshots.publish(policy, current.backend, "policy changed by API",
                                              mode_switch=switch)
            before = flatten(current.policy)
            after = flatten(policy)
            self._user_asked = self._user_asked | {k for k in after if before[k] != after[k]}
            if isinstance(patch, dict) and "profile" in patch:
                self._user_asked |= {"profile"}
            self.plane.set_passthrough(policy.mode == "passthrough")
            self.metrics.policy_version.set(snapshot.version)
            self._decide_now = True
            self._live_dirty = True
        loop = self._loop
        if loop is not None and self.backend is not None and not loop.is_closed():
            # Live keys go out now, not at the next slow tick: policy reaches the engine in
            # milliseconds (bench/live_policy.py measures it end to end).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._push_soon)
        self.event("policy", version=snapshot.version, fields=sorted(patch))
        return snapshot

    def _push_soon(self) -> None:
        self._tasks.start(self._push_live(), name="push-live")

    def live_acknowledged(self, version: int) -> concurrent.futures.Future[None]:
        """Resolves once the backend acknowledged live policy ``version`` (or had nothing
        live to take); for the API's answer. Any thread."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._live_settled(version):
                future.set_result(None)
            else:
                self._live_waiters.append((version, future))
        return future

    def _live_settled(self, version: int) -> bool:
        return not self._live_dirty and (self.live_version or 0) >= version

    def event(self, kind: str, **fields: Any) -> None:
        self.events_written += 1
        self.recent_events.append(self.telemetry.event(kind, **fields))

    # -- loops ------------------------------------------------------------------------
    def _fast(self) -> None:
        self.failsafe.heartbeat()
        backlog = self._backlog
        arrived = self.plane.take_facts()
        assert backlog.maxlen is not None
        self._backlog_dropped += max(0, len(backlog) + len(arrived) - backlog.maxlen)
        backlog.extend(arrived)  # drops the oldest past maxlen (counted above)
        started = time.perf_counter()
        # A tick reads facts for at most FACTS_BUDGET_S (a large body costs milliseconds to
        # read) and beats between them, so many large bodies cannot starve the heartbeat;
        # the rest waits for the next tick.
        while backlog and time.perf_counter() - started < FACTS_BUDGET_S:
            facts = backlog.popleft()
            self.failsafe.heartbeat()
            if facts.route in CLIENT_ROUTES:
                # A client's own load/unload: the backend is the client's now; automatic
                # changes wait, and the next read shows what it chose.
                self.client_changed_at = time.monotonic()
                self._last_read = float("-inf")
                continue
            try:
                context = derive(facts, self.token_counters)
            except Exception:  # facts a client sent must never trip the fail-safe
                log.debug("unreadable request facts dropped", exc_info=True)
                context = None
            if context is None:
                self.facts_dropped += 1
            else:
                self.post_run_context(context)
        self.metrics.run_contexts_dropped.set(self.plane.facts.dropped + self.facts_dropped
                                              + self._backlog_dropped)

    def inject_fault(self) -> None:
        """Test equipment: the mid loop's next tick raises, as a defect in the controller
        would, so that the fail-safe's real path runs (bench/ab.py's fallback criterion;
        ``inferos serve`` wires it to SIGUSR1 only under INFEROS_FAULT_SIGNAL=1). A plain
        flag: safe to set from a signal handler on another thread."""
        self._fault_requested = True

    def _mid(self) -> None:
        if self._fault_requested:
            self._fault_requested = False
            raise InjectedFault("a fault injected on request (test equipment)")
        current = self.snapshots.current
        try:
            current.check()
        except (ConfigError, ValueError) as exc:
            self.failsafe.trip(f"invalid policy snapshot v{current.version}: {exc}", "snapshot")
        self.metrics.failsafe_tripped.set(1 if self.plane.snapshot.failsafe_reason else 0)

    async def _slow(self) -> None:
        sample = await asyncio.to_thread(self.sample_fn)
        self.last_sample = sample
        now = time.monotonic()
        if now - self._last_backend_stats >= BACKEND_STATS_EVERY_S:
            self._last_backend_stats = now
            if self._http is None:
                key = self.settings.upstream_api_key
                self._http = httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {key}"} if key else None)
            latest = await backend_stats.fetch(self._http, self.plane.upstream)
            self.metrics.backend.latest = latest
            self._watch_guard(latest)
            await self._observe_scheduler(latest, sample)
            observed = True
        else:
            observed = False
        self.shedder.tick(sample)
        if self.backend is None or self._actuating:
            return
        if self._watch_backend():
            return
        await self._read_backend()
        if observed:
            self._switch_mode()
        if self._live_dirty:
            await self._push_live()
        now = time.monotonic()
        if self._decide_now or now - self._last_decide >= self.settings.decide_every_s:
            self._last_decide = now
            forced, self._decide_now = self._decide_now, False
            self._decide(sample, forced)

    async def _read_backend(self, force: bool = False) -> None:
        """Re-reads the backend (every couple of seconds, and right before acting)."""
        assert self.backend is not None
        now = time.monotonic()
        if not force and now - self._last_read < BACKEND_READ_EVERY_S:
            return
        self._last_read = now
        try:
            state = await self.backend.read_back()
        except ActuatorError as exc:
            # One failed read is a blip; after a few in a row nothing is known of it any
            # more, and the report says so (not_applied: unknown) instead of going stale.
            self._read_failures += 1
            log.warning("backend unreadable (%d in a row): %s", self._read_failures, exc)
            return
        self._read_failures = 0
        previous = self.state
        if (previous is not None and previous.model != state.model
                and not self._actuating):
            # Not our doing: a client loaded or unloaded (through us or not).
            self.client_changed_at = now
            self.event("client_changed_backend", model_before=previous.model,
                       model_after=state.model)
        self.state = state
        if state.settings.get("ctx_size"):
            self.metrics.ctx_size.set(state.settings["ctx_size"])

    async def _push_live(self) -> None:
        """Sends the live keys when they changed; one push at a time, never during a
        reconfiguration (the new process gets them once it serves)."""
        assert self.backend is not None and self._push_lock is not None
        async with self._push_lock:
            if not self._live_dirty or self._actuating:
                return
            snapshot = self.snapshots.current
            live = policy_report.live_keys(snapshot.policy, snapshot.mode_switch)
            self._live_dirty = False
            try:
                outcomes = await self.backend.apply_live(live, snapshot.version)
            except ActuatorError as exc:  # the backend is unreachable: try again later
                self._live_dirty = True
                log.warning("live policy not sent: %s", exc)
                return
            self._record_live(snapshot, outcomes)

    def _record_live(self, snapshot: PolicySnapshot, outcomes: tuple[Outcome, ...]) -> None:
        self.live_outcomes = {o.key: o for o in outcomes}
        self.live_version = snapshot.version
        applied = {o.key: o.in_effect for o in outcomes if o.status == b.APPLIED}
        failed = {o.key: o.reason for o in outcomes if o.status == b.NOT_APPLIED}
        if applied:
            self.event("live_policy", version=snapshot.version, applied=applied)
        if failed:
            self.event("not_applied", version=snapshot.version, keys=failed)
        with self._lock:
            waiters, self._live_waiters = self._live_waiters, []
            for version, future in waiters:
                if self._live_settled(version):
                    future.set_result(None)
                else:
                    self._live_waiters.append((version, future))

    @property
    def actuating(self) -> bool:
        """True while a reconfiguration (or a restart of a died backend) runs."""
        return self._actuating

    @property
    def capabilities(self) -> Capabilities | None:
        """What the backend can apply, as last read; None once it has been unreadable
        a few times in a row (nothing is known of it any more)."""
        if self.state is None or self._read_failures >= READ_FAILURES_UNKNOWN:
            return None
        return self.state.capabilities

    def _in_effect(self) -> BackendSettings:
        state = self.state
        known = dict(state.settings) if state is not None else {}
        return BackendSettings(ctx_size=known.get("ctx_size"),
                               cache_type=known.get("cache_type", "f16"),
                               threads=known.get("threads"), provider=known.get("provider"))

    def evidence(self, sample: SystemSample | None = None) -> Evidence:
        summary = self.stats.summary(self.settings.decisions.window_s)
        busiest = max(summary.values(), key=lambda s: s.requests, default=None)
        return gather(self.stats.timed(), list(self.contexts), self._in_effect().ctx_size,
                      self.settings.decisions,
                      memory_pressure=bool(sample and sample.memory_pressure),
                      client_changed_at=self.client_changed_at, stats=busiest)

    def _costs(self) -> Costs:
        measured = self.backend.last_change_s if self.backend is not None else None
        caps = self.capabilities
        in_place = caps is None or caps.of("backend.ctx_size").how == b.RELOAD
        return Costs(reload_s=measured, in_place=in_place) if measured else Costs(
            in_place=in_place)

    def _decide(self, sample: SystemSample, forced: bool) -> None:
        caps, state = self.capabilities, self.state
        if caps is None or state is None or self.plane.snapshot.passthrough:
            return
        current = self.snapshots.current
        in_effect = self._in_effect()
        user_asked, self._user_asked = self._user_asked, frozenset()
        decision = self.decide_fn(in_effect, current.policy, self.evidence(sample),
                                  self._costs(), model_max=state.max_ctx,
                                  user_asked=user_asked, settings=self.settings.decisions)
        self.last_decision = decision
        changes = [n for n in decision.changes(in_effect)
                   if caps.setting_applicable(n)]
        self._note_declined(current.policy, decision, in_effect)
        if decision.settings != current.backend:
            snapshot = self.snapshots.publish(current.policy, decision.settings,
                                              decision.reason, mode_switch=current.mode_switch)
            self.metrics.policy_version.set(snapshot.version)
        if not changes:
            return
        cooling = time.monotonic() - self._last_reconfigure < self.settings.reconfigure_cooldown_s
        if cooling and not user_asked:
            return
        self.event("decision", version=self.snapshots.current.version, **decision.as_event())
        self._actuating = True
        self._tasks.start(self._actuate(decision, state.model, tuple(changes)),
                          name="actuate")

    def _note_declined(self, policy: Policy, decision: Decision,
                       in_effect: BackendSettings) -> None:
        """A pinned or profile value the decision did not take is ``not_applied``, why."""
        flat = flatten(policy)
        for key, name in b.RESTART_KEYS.items():
            asked = flat[key]
            if asked is None or getattr(in_effect, name) == asked:
                continue
            if getattr(decision.settings, name) != asked:
                self.restart_outcomes[key] = Outcome(key, b.NOT_APPLIED, asked,
                                                     getattr(in_effect, name),
                                                     reason=decision.reason)

    async def _actuate(self, decision: Decision, model: str | None,
                       changes: tuple[str, ...]) -> None:
        assert self.backend is not None
        self._last_reconfigure = time.monotonic()
        try:
            outcomes = await self.backend.apply(decision.settings, self.plane, model=model,
                                                changes=changes)
        except ActuatorError as exc:
            self.metrics.reconfigurations.labels("failed").inc()
            self.failsafe.trip(f"actuator failed: {exc}", "actuator")
            self.event("actuator_failed", error=str(exc)[:300], rolled_back=exc.rolled_back,
                       settings=decision.settings.as_dict())
            return
        finally:
            self._actuating = False
            self._last_read = float("-inf")
            self._live_dirty = True  # a new process starts with the keys, not the version
        for outcome in outcomes:
            self.restart_outcomes[outcome.key] = outcome
        applied = {o.key: o.in_effect for o in outcomes if o.status == b.APPLIED}
        refused = {o.key: {"value": o.value, "in_effect": o.in_effect, "reason": o.reason}
                   for o in outcomes if o.status != b.APPLIED}
        if applied:
            self.metrics.reconfigurations.labels("ok").inc()
            self.event("reconfigured", backend=self.backend.name, applied=applied,
                       evidence=decision.evidence.as_dict())
        if refused:
            self.metrics.reconfigurations.labels("not_applied").inc()
            self.event("not_applied", backend=self.backend.name, keys=refused)
        await self._read_backend(force=True)

    def _watch_backend(self) -> bool:
        """True when a managed backend died (passthrough, and it is brought back)."""
        assert self.backend is not None
        code = self.backend.exited()
        if code is None:
            return False
        self.failsafe.trip(f"managed backend exited with code {code}", "backend")
        self.event("backend_exited", code=code)
        self._actuating = True
        self._tasks.start(self._restart_backend(), name="restart-backend")
        return True

    async def _restart_backend(self) -> None:
        assert self.backend is not None
        try:
            self.plane.switch_upstream(await self.backend.restart())
            self._live_dirty = True
        except Exception as exc:
            self.event("actuator_failed", error=f"restart failed: {str(exc)[:300]}",
                       rolled_back=False)
        finally:
            self._actuating = False
            self._last_read = float("-inf")

    async def _observe_scheduler(self, latest: backend_stats.BackendStats,
                                 sample: SystemSample) -> None:
        """One sample for the mode decision; the engine's providers, once per process."""
        assert self._http is not None
        hot = None if sample.temperature_c is None else sample.hot  # unmeasured: unknown
        self.modes.observe(latest.scheduler, hot, time.monotonic())
        upstream = self.plane.upstream
        if latest.scheduler is not None and self._providers_of != upstream:
            providers = await backend_stats.fetch_providers(self._http, upstream)
            if providers is not None:
                self.modes.providers, self._providers_of = providers, upstream

    def _switch_mode(self) -> None:
        """Runs another scheduler mode than the policy's while a queue or heat lasts, where
        that changes what runs (controller/scheduler_mode.py); the push sends it."""
        caps = self.capabilities
        if caps is None or caps.of("scheduler.mode").how != b.LIVE \
                or self.plane.snapshot.passthrough:
            return
        with self._lock:
            current = self.snapshots.current
            decision = self.modes.decide(current.policy.scheduler, current.mode_switch,
                                         self.metrics.backend.latest.scheduler,
                                         time.monotonic())
            if not decision.changed:
                return
            switch = None
            if decision.mode is not None:
                assert decision.trigger is not None
                switch = ModeSwitch(decision.mode, current.policy.scheduler.mode,
                                    decision.trigger, decision.reason)
            snapshot = self.snapshots.publish(current.policy, current.backend,
                                              decision.reason, mode_switch=switch)
            self.metrics.policy_version.set(snapshot.version)
            self._live_dirty = True

    def _watch_guard(self, latest: backend_stats.BackendStats) -> None:
        promotions = latest.guard_promotions
        if promotions is None:
            return
        if self._guard_promotions is not None and promotions > self._guard_promotions:
            self.metrics.quality_promotions.inc(promotions - self._guard_promotions)
            self.event("quality_guard", promotions=promotions - self._guard_promotions,
                       delta_ppl_est=latest.delta_ppl_est)
        self._guard_promotions = promotions

    def _telemetry(self) -> None:
        self.telemetry.metric(**self.metrics_fields())

    # -- views (controller/agent_views.py) --------------------------------------------
    def delta_ppl_est(self) -> float | None:
        return agent_views.delta_ppl_est(self)

    def metrics_fields(self) -> dict[str, Any]:
        return agent_views.metrics_fields(self)

    def agent_metrics(self) -> dict[str, Any]:
        return agent_views.agent_metrics(self)

    def policy_status(self) -> dict[str, dict[str, Any]]:
        return agent_views.policy_status(self)

    def health(self) -> dict[str, Any]:
        return agent_views.health(self)
