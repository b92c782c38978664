"""The controller: run-context intake, control loops, decisions, actuation, telemetry.

It runs on its own thread with its own event loop, so nothing it does (a slow decision, a
blocking call, a backend reload) can stall the data plane; the two share only atomic
reads and writes (the policy snapshot, the proxy's mode and upstream, bounded deques).
``start``/``stop`` are the one place its thread and tasks begin and end.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from inferos.controller import backend_stats
from inferos.controller.actuator import Actuator, ActuatorError
from inferos.controller.controller_metrics import ControllerMetrics
from inferos.controller.decisions import KV_DELTA_PPL, Decision, Observed, decide
from inferos.controller.failsafe import FailSafe, FailsafeSettings
from inferos.controller.loops import ControlLoop
from inferos.controller.policy import Policy, apply_patch
from inferos.controller.request_stats import RequestStats
from inferos.controller.run_context import RunContext, TokenCounter, derive
from inferos.controller.snapshot import BackendSettings, PolicySnapshot, SnapshotStore
from inferos.controller.system_sample import SystemSample, SystemSampler
from inferos.controller.telemetry import Telemetry
from inferos.errors import ConfigError
from inferos.proxy.app import ProxyRuntime
from inferos.tasks import TaskGroup

log = logging.getLogger(__name__)
BACKEND_STATS_EVERY_S = 1.0
DecideFn = Callable[[BackendSettings, Policy, Observed], Decision]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    fast_s: float = 0.001
    mid_s: float = 0.010
    slow_s: float = 0.100
    telemetry_s: float = 1.0
    telemetry_dir: Path = Path("logs")
    decide_every_s: float = 10.0
    reconfigure_cooldown_s: float = 30.0
    unshed_after_s: float = 10.0
    failsafe: FailsafeSettings = field(default_factory=FailsafeSettings)


def _shape(d: Decision, fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(d.settings, name) for name in fields)


class Controller:
    def __init__(self, runtime: ProxyRuntime, registry: CollectorRegistry, policy: Policy,
                 settings: ControllerSettings, actuator: Actuator | None = None,
                 *, stats: RequestStats | None = None,
                 token_counters: dict[str, TokenCounter] | None = None,
                 decide_fn: DecideFn = decide,
                 sampler: Callable[[], SystemSample] | None = None,
                 profiles: Mapping[str, Policy] | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.actuator = actuator
        self.stats = stats or RequestStats()
        self.token_counters = token_counters or {}
        self.decide_fn = decide_fn
        self.profiles = profiles
        self.sample_fn = sampler or SystemSampler().sample
        self.metrics = ControllerMetrics(registry)
        self.telemetry = Telemetry(settings.telemetry_dir)
        self.failsafe = FailSafe(runtime.mode, settings.failsafe, registry, self.event)
        initial = actuator.settings if actuator is not None else BackendSettings()
        self.snapshots = SnapshotStore(PolicySnapshot(1, policy, initial, "initial policy"))
        self.metrics.policy_version.set(1)
        self.contexts: collections.deque[RunContext] = collections.deque(maxlen=2048)
        self.last_sample: SystemSample | None = None
        self.last_decision: Decision | None = None
        self.events_written = 0
        self._decide_now = True
        self._last_decide = 0.0
        self._last_reconfigure = float("-inf")
        self._actuating = False
        self._normal_since: float | None = None
        self._last_backend_stats = float("-inf")
        self._http: httpx.AsyncClient | None = None
        self._lock = threading.Lock()  # serializes policy changes from API callers
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
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
        start_backend = getattr(self.actuator, "start", None)
        if start_backend is not None:
            # A managed backend lives on this loop (its process is watched from here).
            try:
                self.runtime.upstream = await start_backend()
            except BaseException as exc:
                self.start_error = exc
                ready.set()
                return
            self.runtime.in_flight_by_upstream.setdefault(self.runtime.upstream, 0)
        for control_loop in self.loops:
            self._tasks.start(control_loop.run(), name=f"loop-{control_loop.name}")
        ready.set()
        await self._stopping.wait()
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()
        if self.actuator is not None:
            await self.actuator.close()

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=60)
        self._thread = None

    # -- inputs -----------------------------------------------------------------------
    def post_run_context(self, context: RunContext) -> None:
        self.contexts.append(context)
        self.metrics.run_contexts.labels(context.seq_len_source == "caller" and "api"
                                         or "proxy").inc()

    def set_policy(self, patch: Any) -> PolicySnapshot:
        """All-or-nothing: raises ConfigError naming the field, or publishes a snapshot."""
        with self._lock:
            current = self.snapshots.current
            policy = apply_patch(current.policy, patch, self.profiles)
            snapshot = self.snapshots.publish(policy, current.backend, "policy changed by API")
            self.runtime.mode.forced = policy.mode == "passthrough"
            self.metrics.policy_version.set(snapshot.version)
            self._decide_now = True
        self.event("policy", version=snapshot.version, fields=sorted(patch))
        return snapshot

    def event(self, kind: str, **fields: Any) -> None:
        self.events_written += 1
        self.telemetry.event(kind, **fields)

    # -- loops ------------------------------------------------------------------------
    def _fast(self) -> None:
        self.failsafe.heartbeat()
        pending = self.runtime.run_contexts
        if pending is not None and len(pending):
            for facts in pending.drain():
                context = derive(facts, self.token_counters)
                if context is not None:
                    self.post_run_context(context)
            self.metrics.run_contexts_dropped.set(pending.dropped)

    def _mid(self) -> None:
        current = self.snapshots.current
        try:
            current.check()
        except (ConfigError, ValueError) as exc:
            self.failsafe.trip(f"invalid policy snapshot v{current.version}: {exc}", "snapshot")
        self.metrics.failsafe_tripped.set(1 if self.runtime.mode.failsafe_reason else 0)

    async def _slow(self) -> None:
        sample = await asyncio.to_thread(self.sample_fn)
        self.last_sample = sample
        now = time.monotonic()
        if now - self._last_backend_stats >= BACKEND_STATS_EVERY_S:
            self._last_backend_stats = now
            if self._http is None:
                self._http = httpx.AsyncClient()
            self.metrics.backend.latest = await backend_stats.fetch(self._http,
                                                                     self.runtime.upstream)
        self._shed(sample)
        await self._watch_backend()
        now = time.monotonic()
        if self._actuating:
            return
        if self._decide_now or now - self._last_decide >= self.settings.decide_every_s:
            self._last_decide = now
            forced, self._decide_now = self._decide_now, False
            self._decide(sample, forced)

    def _observed(self, sample: SystemSample) -> Observed:
        recent = [c for c in self.contexts if c.at >= time.time() - 600]
        longest = max((c.seq_len + (c.max_tokens or 512) for c in recent), default=None)
        budgets = [c.quality_budget for c in recent if c.quality_budget is not None]
        summary = self.stats.summary()
        busiest = max(summary.values(), key=lambda s: s.requests, default=None)
        return Observed(stats=busiest, longest_request_tokens=longest,
                        memory_pressure=sample.memory_pressure,
                        quality_budget=min(budgets) if budgets else None)

    def _decide(self, sample: SystemSample, forced: bool) -> None:
        current = self.snapshots.current
        decision = self.decide_fn(current.backend, current.policy, self._observed(sample))
        self.last_decision = decision
        if decision.settings == current.backend:
            return
        snapshot = self.snapshots.publish(current.policy, decision.settings, decision.reason)
        self.metrics.policy_version.set(snapshot.version)
        if decision.settings.ctx_size:
            self.metrics.ctx_size.set(decision.settings.ctx_size)
        self.event("decision", version=snapshot.version, reason=decision.reason,
                   objective=decision.objective, settings=_public(decision.settings))
        actuator = self.actuator
        if actuator is None or self.runtime.mode.forced:
            return
        fields = getattr(actuator, "relevant_fields", ("ctx_size",))
        if tuple(getattr(actuator.settings, f) for f in fields) == _shape(decision, fields):
            return
        cooling = time.monotonic() - self._last_reconfigure < self.settings.reconfigure_cooldown_s
        if cooling and not forced:
            return
        self._actuating = True
        self._tasks.start(self._actuate(actuator, decision.settings), name="actuate")

    async def _actuate(self, actuator: Actuator, settings: BackendSettings) -> None:
        self._last_reconfigure = time.monotonic()
        before = actuator.settings
        try:
            await actuator.apply(settings, None)
        except ActuatorError as exc:
            self.metrics.reconfigurations.labels("failed").inc()
            # The backend kept (or was put back on) its last good settings.
            current = self.snapshots.current
            self.snapshots.publish(current.policy, actuator.settings, "actuator failed")
            self.failsafe.trip(f"actuator failed: {exc}", "actuator")
            self.event("actuator_failed", error=str(exc)[:300], rolled_back=exc.rolled_back,
                       settings=_public(settings))
        else:
            self.metrics.reconfigurations.labels("ok").inc()
            self.event("reconfigured", before=_public(before), after=_public(settings),
                       actuator=actuator.name)
        finally:
            self._actuating = False

    async def _watch_backend(self) -> None:
        child = getattr(self.actuator, "child", None)
        process = getattr(child, "process", None)
        if process is None or process.returncode is None or self._actuating:
            return
        # A managed backend died: passthrough, and bring back the last good configuration.
        self.failsafe.trip(f"managed backend exited with code {process.returncode}", "backend")
        self.event("backend_exited", code=process.returncode)
        assert self.actuator is not None
        self._actuating = True
        self._tasks.start(self._actuate(self.actuator, self.actuator.settings), name="restart")

    def _shed(self, sample: SystemSample) -> None:
        admission = self.runtime.admission
        if sample.hot or sample.memory_pressure:
            self._normal_since = None
            if admission.limit is None:
                limit = max(1, self.runtime.in_flight // 2)
                admission.set_limit(limit)
                self.metrics.load_shed.set(1)
                self.metrics.concurrency_limit.set(limit)
                self.event("shed", limit=limit, hot=sample.hot,
                           memory_pressure=sample.memory_pressure,
                           temperature_c=sample.temperature_c,
                           host_mem_percent=sample.host_mem_percent)
            return
        if admission.limit is None:
            return
        now = time.monotonic()
        self._normal_since = self._normal_since or now
        if now - self._normal_since >= self.settings.unshed_after_s:
            admission.set_limit(None)
            self.metrics.load_shed.set(0)
            self.metrics.concurrency_limit.set(0)
            self.event("unshed")

    def _telemetry(self) -> None:
        self.telemetry.metric(**self.metrics_fields())

    # -- views ------------------------------------------------------------------------
    def metrics_fields(self) -> dict[str, Any]:
        overall = self.stats.overall()
        last = self.contexts[-1] if self.contexts else None
        sample = self.last_sample
        backend = self.snapshots.current.backend
        kv = self.metrics.backend.latest.kv_tokens
        return {
            "t": time.time(), "model": last.model if last else None,
            "seq_len": last.seq_len if last else None, "batch": self.runtime.in_flight,
            "tps": overall.tps, "ftl": overall.ttft_p50_ms, "p95": overall.ttft_p95_ms,
            "vram": None, "host_mem": round(sample.host_mem_used_gb, 3) if sample else None,
            "npu_util": None, "igpu_util": None,
            **{f"kv_{level}": kv.get(level) for level in backend_stats.LEVELS},
            "delta_ppl_est": KV_DELTA_PPL.get(backend.cache_type_k),
        }

    def agent_metrics(self) -> dict[str, Any]:
        f = self.metrics_fields()
        sample = self.last_sample
        return {
            "tps": f["tps"], "ftl_ms": f["ftl"], "p95_ms": f["p95"],
            "mem": {"vram_gb": None, "host_gb": f["host_mem"],
                    "kv_levels": {level: f[f"kv_{level}"] for level in backend_stats.LEVELS}},
            "util": {"npu": None, "igpu": None, "cpu": sample.cpu_percent if sample else None},
            "quality": {"delta_ppl_est": f["delta_ppl_est"], "spec_accept": None},
        }

    def health(self) -> dict[str, Any]:
        snapshot = self.snapshots.current
        minute = self.stats.overall(60.0)
        return {
            "last_minute": {"requests": minute.requests, "errors": minute.errors,
                            "ttft_p50_ms": minute.ttft_p50_ms, "ttft_p95_ms": minute.ttft_p95_ms,
                            "tps": minute.tps},
            "policy_version": snapshot.version,
            "policy": snapshot.policy.to_dict(),
            "backend_settings": _public(snapshot.backend),
            "controller": {
                "heartbeat_age_ms": round((time.monotonic() - self.failsafe.heartbeat_at)
                                          * 1000, 1),
                "failsafe_trips": self.failsafe.trips,
                "last_fault_to_passthrough_ms": None if self.failsafe.last_trip_latency_s
                is None else round(self.failsafe.last_trip_latency_s * 1000, 3),
                "loops": {lp.name: {"period_ms": lp.period_s * 1000, "ticks": lp.ticks,
                                    "errors": lp.errors,
                                    "last_jitter_ms": round(lp.last_jitter_s * 1000, 3)}
                          for lp in self.loops},
                "run_contexts": len(self.contexts),
                "concurrency_limit": self.runtime.admission.limit,
                "actuator": getattr(self.actuator, "name", None),
                "actuating": self._actuating,
            },
        }


def _public(settings: BackendSettings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}

