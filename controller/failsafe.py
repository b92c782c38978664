"""The fail-safe: any control-plane failure turns the proxy into pure passthrough.

Trips come from four places: an exception in a control loop, a stale controller, an invalid
policy snapshot, a failed actuator (or a managed backend that died). ``trip`` is one
snapshot swap through the data plane's seam (``DataPlane.trip``), safe from any thread, and
records how long it took from the fault to passthrough. The watchdog (``watch``) runs on the
*data plane's* event loop, so it keeps working when the controller's thread hangs; it also
ends passthrough once the controller has been healthy (fresh heartbeats, no new fault) for
``recover_after_s``. A user's own passthrough switch is separate and never cleared here.

A hung controller, not a starved process
----------------------------------------
The controller beats ``heartbeat()`` every fast tick (1 ms). Its heartbeat is stale when the
time the controller *could have run* since its last beat exceeds ``stale_after_s``. Time it
could not run is excused, from two measurements (``StalenessTracker`` turns them into
``Evidence``, ``StalenessRule`` decides; both pure, tested with a fake clock):

- the data plane's **stall**: how late the watchdog's own sleep woke, minus the CPU time the
  whole process used meanwhile. A stopped (SIGSTOP, a debugger) or starved process wakes
  late having used no CPU: all of that is excused. A loop that was late because this process
  was busy (the data plane serving, a controller holding the GIL) used the CPU: not excused.
- the controller thread's **run-queue wait**, on Linux (``/proc/self/task/<tid>/schedstat``,
  registered by the controller with ``register_controller_thread``): time it was ready but
  not scheduled. The kernel adds a wait only when it ends, so a thread that is runnable now
  (state R) and has not run since the last tick is starved *now*, and gets no verdict until
  it runs.

- the data plane thread's **run-queue wait**, read the same way by the watchdog, which runs
  on that thread. The controller needs the GIL to run, and a thread that holds it while
  ready but not scheduled keeps the controller waiting on it, asleep (not on a run queue,
  so its own counters show nothing): seen on a loaded two-core machine as "no heartbeat for
  265 ms (134 ms of it starved, its thread ran 19 ms)". The data plane is the thread that
  holds the GIL the most. Its wait and the stall measure the same starvation of the data
  plane, so the larger of the two counts, not their sum.

- the **garbage collector's** time (``gc_clock.py``): a full collection stops every thread,
  for 40-180 ms in a process with many live objects, and may run in the controller's thread
  (which then "ran" without beating). The whole process paused: excused.

Each is counted only for the part of its window after the heartbeat, and the excuse is
capped at ``starved_limit_s``: past that a starved controller counts as hung, because what
it left in force (a closed gate, a limit) would otherwise hold requests.

What counts as hung: a controller blocked in a syscall, a sleep or on a lock (its thread
sleeps: nothing is excused), one spinning in Python (its thread runs), and one holding the
GIL in a long C call. That last one stops the data plane as well, so nothing in the process
can act while it lasts; the data plane's stall is not excused (this process was using the
CPU), and the fail-safe trips at the first tick after, unless the controller beats first.
Known limit: a data-plane callback that holds the GIL longer than the bound looks the same
(the controller then waits for the GIL as it would on any lock) and trips it. Without
schedstat (Windows, macOS, a kernel without schedstats) only the stall is excused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from inferos.controller.gc_clock import GcClock
from inferos.proxy.data_plane import DataPlane

log = logging.getLogger(__name__)
TRIP_REASONS = ("exception", "stale", "snapshot", "actuator", "backend")
TRIP_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A healthy loop's sleep wakes up to ~1 ms late (epoll timeouts are whole milliseconds);
# that is timer rounding, not a stall, and excusing it would lengthen every hang's trip.
TIMER_SLACK_S = 0.002


@dataclass(frozen=True, slots=True)
class FailsafeSettings:
    # The seed allows 1 s; the target is 100 ms from hang to passthrough. A hang is dated
    # from the last heartbeat, so the trip comes stale_after_s + at most one watch period
    # later. 250 ms was needed while a starved process counted as hung (a loaded two-core
    # machine starved the controller for ~95 ms); starvation is excused now.
    stale_after_s: float = 0.075
    watch_period_s: float = 0.01
    recover_after_s: float = 5.0
    starved_limit_s: float = 2.0


# -- the rule (pure) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ThreadSchedule:
    """One reading of a thread's scheduler counters (seconds, since the thread began)."""

    tid: int
    run_s: float                  # on a CPU
    wait_s: float                 # ready on a run queue, not running (finished waits only)
    runnable: bool | None = None  # state R now; read only when a verdict depends on it


@dataclass(frozen=True, slots=True)
class WatchSample:
    """What the watchdog measured at one tick."""

    at: float                     # monotonic
    stall_s: float                # the data plane's stall, cumulative
    controller: ThreadSchedule | None = None
    data_plane: ThreadSchedule | None = None
    gc_s: float = 0.0             # the garbage collector's time, cumulative


@dataclass(frozen=True, slots=True)
class Evidence:
    """About the current heartbeat: how old it is, and how much of that age the controller
    could not have run."""

    heartbeat_age_s: float
    stall_s: float = 0.0                  # the process was stopped or starved
    runqueue_wait_s: float | None = None  # the controller's thread was ready, not scheduled
    waiting_now: bool = False             # ... and still is
    ran_s: float | None = None            # the controller's thread was on a CPU (diagnosis)
    plane_wait_s: float | None = None     # the data plane's thread (the GIL's usual holder)
                                          # was ready, not scheduled
    gc_s: float = 0.0                     # the garbage collector paused the process

    @property
    def excused_s(self) -> float:
        # The data plane's starvation (its stall, or its thread's run-queue wait: two
        # measures of one thing, so the larger) plus the controller's own: a sum, not a
        # max, since a thread on a run queue is not also stopped, and a stopped process
        # followed by a starved thread must excuse both. Where they overlap (everything
        # starved at once) the sum can only excuse more than the age, and the rule clips it.
        # A collection used the CPU, so no stall or run-queue wait counts it as well.
        return max(self.stall_s, self.plane_wait_s or 0.0) + (self.runqueue_wait_s or 0.0) \
            + self.gc_s


@dataclass(frozen=True, slots=True)
class StalenessRule:
    stale_after_s: float
    starved_limit_s: float

    def hung_for(self, evidence: Evidence) -> float:
        """The part of the heartbeat's age in which the controller could have run."""
        excused = min(evidence.excused_s, self.starved_limit_s)
        return max(0.0, evidence.heartbeat_age_s - excused)

    def stale(self, evidence: Evidence) -> bool:
        age = evidence.heartbeat_age_s
        if age <= self.stale_after_s:
            return False
        if evidence.waiting_now and age <= self.stale_after_s + self.starved_limit_s:
            return False  # ready to run, not yet scheduled: starved, not hung
        return self.hung_for(evidence) > self.stale_after_s

    def excuses(self, evidence: Evidence) -> bool:
        """True when the heartbeat is past the bound and only starvation explains it."""
        return evidence.heartbeat_age_s > self.stale_after_s and not self.stale(evidence)


class StalenessTracker:
    """Turns the watchdog's samples into ``Evidence`` about the current heartbeat.

    Between two samples the stall and the run-queue wait grew by some amount; only the
    part of that window after the heartbeat can excuse it, so each window contributes at
    most its span after the beat (a stall that ended just before a beat excuses nothing of a
    hang that follows it)."""

    def __init__(self) -> None:
        self._prev: WatchSample | None = None
        self._since: float | None = None  # the first sample's time
        self._beat: float | None = None
        self._stall_s = 0.0
        self._wait_s = 0.0
        self._ran_s = 0.0
        self._plane_wait_s = 0.0
        self._gc_s = 0.0

    def observe(self, sample: WatchSample, heartbeat_at: float) -> Evidence:
        prev, self._prev = self._prev, sample
        if self._since is None:
            self._since = sample.at
        if heartbeat_at != self._beat:  # a new beat: its evidence starts from nothing
            self._beat = heartbeat_at
            self._stall_s = self._wait_s = self._ran_s = self._plane_wait_s = self._gc_s = 0.0
        # Age counts from the first sample at the latest: before it nothing was measured, so
        # nothing can be excused, and a starved start (the controller's first beat, then
        # the listeners binding on a loaded machine) read as a hang with no evidence.
        age = max(0.0, sample.at - max(heartbeat_at, self._since))
        now = sample.controller
        plane = sample.data_plane
        if prev is None:
            return Evidence(age, runqueue_wait_s=None if now is None else 0.0,
                            ran_s=None if now is None else 0.0,
                            plane_wait_s=None if plane is None else 0.0)
        span = max(0.0, min(age, sample.at - prev.at))
        self._stall_s += min(max(0.0, sample.stall_s - prev.stall_s), span)
        self._gc_s += min(max(0.0, sample.gc_s - prev.gc_s), span)
        before = prev.controller
        waiting_now = False
        if now is not None and before is not None and now.tid == before.tid:
            self._wait_s += min(max(0.0, now.wait_s - before.wait_s), span)
            self._ran_s += min(max(0.0, now.run_s - before.run_s), span)
            waiting_now = now.runnable is True and now.run_s <= before.run_s
        if plane is not None and prev.data_plane is not None \
                and plane.tid == prev.data_plane.tid:
            self._plane_wait_s += min(max(0.0, plane.wait_s - prev.data_plane.wait_s), span)
        return Evidence(age, self._stall_s, None if now is None else self._wait_s, waiting_now,
                        None if now is None else self._ran_s,
                        None if plane is None else self._plane_wait_s, self._gc_s)


# -- measuring ------------------------------------------------------------------------------
def unexplained_lateness(late_s: float, busy_s: float) -> float:
    """The part of a sleep's lateness that this process's CPU time (all threads) does not
    explain: time it was stopped or starved. Within ``TIMER_SLACK_S``: timer rounding."""
    stall = late_s - busy_s
    return stall if stall > TIMER_SLACK_S else 0.0


class ThreadProbe:
    """Scheduler counters of one thread of this process, from Linux's ``/proc``."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self._dir = f"/proc/self/task/{tid}/"

    @classmethod
    def current(cls) -> ThreadProbe | None:
        """A probe on the calling thread; None where there is no schedstat to read."""
        probe = cls(threading.get_native_id())
        return probe if probe.read() is not None else None

    def read(self, with_state: bool = False) -> ThreadSchedule | None:
        """None once the thread is gone (or on a system without these files)."""
        try:
            with open(self._dir + "schedstat", "rb") as f:
                run_ns, wait_ns = f.read().split()[:2]
            runnable = None
            if with_state:
                with open(self._dir + "stat", "rb") as f:
                    # "tid (comm) S ...": comm may hold spaces and parentheses.
                    runnable = f.read().rpartition(b")")[2].split()[0] == b"R"
            return ThreadSchedule(self.tid, int(run_ns) / 1e9, int(wait_ns) / 1e9, runnable)
        except (OSError, ValueError, IndexError):
            return None


class FailSafe:
    def __init__(self, plane: DataPlane, settings: FailsafeSettings,
                 registry: CollectorRegistry,
                 on_event: Callable[..., object] | None = None) -> None:
        self.plane = plane
        self.settings = settings
        self.rule = StalenessRule(settings.stale_after_s, settings.starved_limit_s)
        self.heartbeat_at = time.monotonic()
        self.last_fault_at: float | None = None
        self.last_trip_latency_s: float | None = None
        self.trips = 0
        self.stall_s = 0.0       # the data plane's measured stall, in total
        self.starved = 0         # heartbeats past the bound that starvation explained
        self.last_evidence: Evidence | None = None
        self._tracker = StalenessTracker()
        self._probe: ThreadProbe | None = None
        self._plane_probe: ThreadProbe | None = None  # the watchdog's (data plane's) thread
        self._excused_beat: float | None = None
        self._gc = GcClock()  # started and stopped by the watchdog (watch)
        self._on_event = on_event
        self.failovers = Counter("inferos_failovers", "Fail-safe trips to passthrough",
                                 ("reason",), registry=registry)
        for reason in TRIP_REASONS:  # exported as 0 from the start, so rates are defined
            self.failovers.labels(reason)
        self.trip_latency = Histogram(
            "inferos_failsafe_trip_latency_seconds", "Time from a fault to passthrough",
            registry=registry, buckets=TRIP_BUCKETS)
        self.starved_total = Counter(
            "inferos_failsafe_starved",
            "Heartbeats older than the bound not taken for a hang: the process was stopped "
            "or starved, or the controller's thread waited for a CPU", registry=registry)

    # -- the controller's side -----------------------------------------------------------
    def heartbeat(self) -> None:
        self.heartbeat_at = time.monotonic()

    def register_controller_thread(self) -> None:
        """Called from the controller's own thread, so its run-queue wait can excuse it."""
        self._probe = ThreadProbe.current()

    def trip(self, reason: str, kind: str, fault_at: float | None = None) -> None:
        """Passthrough now. ``fault_at`` (monotonic) is when the fault happened, if known.
        Every call, tripped or not, restarts the healthy spell that recovery waits for."""
        now = time.monotonic()
        fault_at = now if fault_at is None else fault_at
        self.last_fault_at = now
        if self.plane.snapshot.failsafe_reason is not None:
            return  # already in passthrough, by an earlier fault
        # Recorded before the switch, so whoever sees passthrough also sees its latency.
        latency = now - fault_at
        previous, self.last_trip_latency_s = self.last_trip_latency_s, latency
        if not self.plane.trip(reason):
            self.last_trip_latency_s = previous  # another thread's trip came first
            return
        self.trips += 1
        self.failovers.labels(kind).inc()
        self.trip_latency.observe(self.last_trip_latency_s)
        log.error("fail-safe: passthrough (%s), %.1f ms after the fault", reason,
                  self.last_trip_latency_s * 1000)
        self._emit("failover", reason=reason, cause=kind,
                   fault_to_passthrough_ms=round(self.last_trip_latency_s * 1000, 3))

    def _emit(self, kind: str, **fields: object) -> None:
        # Passthrough is already in force; failing to record it must not undo anything.
        if self._on_event is None:
            return
        try:
            self._on_event(kind, **fields)
        except Exception:
            log.exception("could not record the %s event", kind)

    # -- the data plane's side (its event loop) -----------------------------------------
    def check(self) -> None:
        """One watchdog tick: trip on a stale heartbeat, or recover after a healthy spell."""
        heartbeat_at = self.heartbeat_at
        now = time.monotonic()
        probe = self._probe
        controller = None
        if probe is not None:
            controller = probe.read(with_state=now - heartbeat_at > self.rule.stale_after_s)
        plane = self._plane_probe.read() if self._plane_probe is not None else None
        evidence = self._tracker.observe(
            WatchSample(now, self.stall_s, controller, plane, self._gc.total_s), heartbeat_at)
        self.last_evidence = evidence
        if self.rule.stale(evidence):
            excused_ms = min(evidence.excused_s, evidence.heartbeat_age_s) * 1000
            ran = ("" if evidence.ran_s is None
                   else f", its thread ran {evidence.ran_s * 1000:.0f} ms")
            self.trip(f"controller stale: no heartbeat for "
                      f"{evidence.heartbeat_age_s * 1000:.0f} ms"
                      + (f" ({excused_ms:.0f} ms of it starved{ran})" if excused_ms >= 1
                         else f" ({ran[2:]})" if ran else ""),
                      "stale", fault_at=heartbeat_at)
            return
        if self.rule.excuses(evidence) and self._excused_beat != heartbeat_at:
            self._excused_beat = heartbeat_at
            self.starved += 1
            self.starved_total.inc()
            log.info("fail-safe: heartbeat %.0f ms old, but the controller was starved "
                     "(stall %.0f ms, garbage collection %.0f ms, run queue %s ms, data "
                     "plane's run queue %s ms%s): not a hang",
                     evidence.heartbeat_age_s * 1000, evidence.stall_s * 1000,
                     evidence.gc_s * 1000,
                     "?" if evidence.runqueue_wait_s is None
                     else f"{evidence.runqueue_wait_s * 1000:.0f}",
                     "?" if evidence.plane_wait_s is None
                     else f"{evidence.plane_wait_s * 1000:.0f}",
                     ", waiting now" if evidence.waiting_now else "")
        reason = self.plane.snapshot.failsafe_reason
        if (reason is not None and self.last_fault_at is not None
                and now - self.last_fault_at >= self.settings.recover_after_s):
            self.plane.clear_failsafe()
            log.warning("fail-safe: controller healthy again; leaving passthrough")
            self._emit("recovered", after=reason)

    async def watch(self) -> None:
        """The watchdog; runs until cancelled. Each tick also measures the data plane's
        stall: lateness of its own sleep that this process's CPU time does not explain."""
        period = self.settings.watch_period_s
        self._plane_probe = ThreadProbe.current()
        self._gc.start()
        try:
            while True:
                slept_at, cpu_at = time.monotonic(), time.process_time()
                await asyncio.sleep(period)
                late = time.monotonic() - slept_at - period
                self.stall_s += unexplained_lateness(late, time.process_time() - cpu_at)
                try:
                    self.check()
                except Exception:  # a broken watchdog must not leave the proxy unguarded
                    log.exception("fail-safe watchdog tick failed")
                    self.trip("fail-safe watchdog failed", "exception")
        finally:
            self._gc.stop()

    def describe(self) -> dict[str, object]:
        """For ``/v1/health``: how the staleness rule sees the controller now."""
        evidence = self.last_evidence
        return {
            "stale_after_ms": self.settings.stale_after_s * 1000,
            "controller_thread_probed": self._probe is not None,
            "data_plane_thread_probed": self._plane_probe is not None,
            "stall_ms_total": round(self.stall_s * 1000, 1),
            "gc_ms_total": round(self._gc.total_s * 1000, 1),
            "starved_not_hung": self.starved,
            "excused_ms": None if evidence is None
            else round(min(evidence.excused_s, evidence.heartbeat_age_s) * 1000, 1),
        }
