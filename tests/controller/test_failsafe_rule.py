"""The fail-safe's rule, on a fake clock: a hung controller trips within the bound; a stopped
or starved process, or a controller's thread waiting for a CPU, does not; the excuse ends
at its limit; passthrough ends after a healthy spell."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from inferos.controller import failsafe as failsafe_module
from inferos.controller.failsafe import (
    Evidence,
    FailSafe,
    FailsafeSettings,
    StalenessRule,
    StalenessTracker,
    ThreadProbe,
    ThreadSchedule,
    WatchSample,
)
from inferos.proxy.data_plane import DataPlane

RULE = StalenessRule(stale_after_s=0.075, starved_limit_s=2.0)
MS = 0.001


# -- the rule ------------------------------------------------------------------------------
def test_default_bound_meets_the_100_ms_target() -> None:
    settings = FailsafeSettings()
    # a hang is dated from the last beat; the watchdog sees it at most a period late
    assert settings.stale_after_s + settings.watch_period_s <= 0.1


def test_a_fresh_heartbeat_is_never_stale() -> None:
    assert not RULE.stale(Evidence(heartbeat_age_s=50 * MS))
    assert not RULE.stale(Evidence(heartbeat_age_s=75 * MS))


def test_a_controller_blocked_in_a_call_is_hung() -> None:
    # its thread sleeps: no stall, no run-queue wait
    assert RULE.stale(Evidence(heartbeat_age_s=80 * MS, runqueue_wait_s=0.0))
    assert RULE.stale(Evidence(heartbeat_age_s=80 * MS))  # same without schedstat


def test_a_stopped_process_is_not_hung() -> None:
    evidence = Evidence(heartbeat_age_s=510 * MS, stall_s=495 * MS)
    assert not RULE.stale(evidence) and RULE.excuses(evidence)
    assert RULE.hung_for(evidence) == pytest.approx(15 * MS)


def test_a_controller_waiting_for_a_cpu_is_starved_not_hung() -> None:
    assert not RULE.stale(Evidence(heartbeat_age_s=300 * MS, runqueue_wait_s=260 * MS))
    # still waiting: the kernel has not yet added this wait to the counter
    waiting = Evidence(heartbeat_age_s=300 * MS, runqueue_wait_s=0.0, waiting_now=True)
    assert not RULE.stale(waiting) and RULE.excuses(waiting)


def test_stall_and_run_queue_wait_add_up() -> None:
    # stopped for 300 ms, then the controller's thread waited 100 ms more for a CPU
    assert not RULE.stale(Evidence(heartbeat_age_s=420 * MS, stall_s=300 * MS,
                                   runqueue_wait_s=100 * MS))


def test_starvation_does_not_hide_the_hang_that_follows_it() -> None:
    # excused 200 ms, but 100 ms of the age remain unexplained
    assert RULE.stale(Evidence(heartbeat_age_s=300 * MS, stall_s=200 * MS))


def test_the_excuse_ends_at_its_limit() -> None:
    assert RULE.stale(Evidence(heartbeat_age_s=5.0, stall_s=5.0))
    assert RULE.stale(Evidence(heartbeat_age_s=2.2, runqueue_wait_s=0.0, waiting_now=True))


def test_a_stall_is_only_lateness_the_process_cpu_does_not_explain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert failsafe_module.unexplained_lateness(0.5, 0.004) == pytest.approx(0.496)
    # the data plane was late because this process was busy (serving, or a controller
    # holding the GIL): not excused
    assert failsafe_module.unexplained_lateness(0.3, 0.3) == 0.0
    assert failsafe_module.unexplained_lateness(0.3, 0.5) == 0.0  # two cores busy
    assert failsafe_module.unexplained_lateness(0.001, 0.0) == 0.0  # timer rounding


# -- the tracker: evidence about one heartbeat, from the watchdog's samples ----------------
def _sched(run: float, wait: float, runnable: bool | None = None, tid: int = 7) -> ThreadSchedule:
    return ThreadSchedule(tid, run, wait, runnable)


def test_tracker_counts_only_what_follows_the_beat() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0), heartbeat_at=0.000)
    # the process was stopped for 400 ms; the controller beat right after, then hung
    tracker.observe(WatchSample(0.410, 0.400), heartbeat_at=0.405)
    evidence = tracker.observe(WatchSample(0.500, 0.400), heartbeat_at=0.405)
    assert evidence.heartbeat_age_s == pytest.approx(0.095)
    assert evidence.stall_s == pytest.approx(0.005)  # at most the 5 ms after the beat
    assert RULE.stale(evidence)


def test_tracker_excuses_a_stop_that_began_after_the_beat() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0), heartbeat_at=0.000)
    tracker.observe(WatchSample(0.010, 0.0), heartbeat_at=0.009)
    evidence = tracker.observe(WatchSample(0.520, 0.498), heartbeat_at=0.009)
    assert evidence.stall_s == pytest.approx(0.498)
    assert not RULE.stale(evidence)


def test_tracker_starts_over_at_each_beat() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0), heartbeat_at=0.000)
    tracker.observe(WatchSample(0.500, 0.490), heartbeat_at=0.000)
    evidence = tracker.observe(WatchSample(0.510, 0.490), heartbeat_at=0.505)
    assert evidence.stall_s == 0.0 and evidence.heartbeat_age_s == pytest.approx(0.005)


def test_tracker_reads_the_run_queue_and_a_wait_in_progress() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.000)
    # ready since the beat, never scheduled: the counter has not moved yet
    waiting = tracker.observe(WatchSample(0.100, 0.0, _sched(1.0, 0.5, runnable=True)),
                              heartbeat_at=0.000)
    assert waiting.waiting_now and waiting.runqueue_wait_s == 0.0
    assert not RULE.stale(waiting)
    # scheduled at last: the kernel adds the whole wait (clipped to the window)
    ran = tracker.observe(WatchSample(0.200, 0.0, _sched(1.001, 0.69, runnable=True)),
                          heartbeat_at=0.000)
    assert not ran.waiting_now and ran.runqueue_wait_s == pytest.approx(0.1)


def test_tracker_a_spinning_controller_is_not_waiting() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.000)
    spinning = tracker.observe(WatchSample(0.100, 0.0, _sched(1.1, 0.5, runnable=True)),
                               heartbeat_at=0.000)
    assert not spinning.waiting_now and RULE.stale(spinning)


def test_tracker_a_new_controller_thread_brings_no_old_counters() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, _sched(1.0, 9.0, tid=7)), heartbeat_at=0.0)
    evidence = tracker.observe(WatchSample(0.100, 0.0, _sched(0.0, 0.0, True, tid=8)),
                               heartbeat_at=0.0)
    assert evidence.runqueue_wait_s == 0.0 and not evidence.waiting_now
    assert RULE.stale(evidence)


# -- the FailSafe on a fake clock ---------------------------------------------------------
class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.cpu = 0.0

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(failsafe_module, "time", fake)
    return fake


def _failsafe(events: list[tuple[str, dict[str, Any]]] | None = None) -> FailSafe:
    def on_event(kind: str, **fields: Any) -> None:
        if events is not None:
            events.append((kind, fields))

    return FailSafe(DataPlane("http://upstream"), FailsafeSettings(), CollectorRegistry(),
                    on_event)


def _ticks(fs: FailSafe, clock: FakeTime, n: int, *, beat: bool) -> None:
    for _ in range(n):
        clock.now += 0.010
        if beat:
            fs.heartbeat()
        fs.check()


def test_failsafe_trips_on_a_hang_and_dates_it_from_the_last_beat(clock: FakeTime) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    fs = _failsafe(events)
    _ticks(fs, clock, 3, beat=True)
    last_beat = fs.heartbeat_at
    _ticks(fs, clock, 7, beat=False)  # 70 ms: within the bound
    assert fs.trips == 0 and not fs.plane.snapshot.passthrough
    _ticks(fs, clock, 1, beat=False)
    assert fs.trips == 1 and fs.plane.snapshot.passthrough
    assert "stale" in (fs.plane.snapshot.failsafe_reason or "")
    assert fs.last_trip_latency_s == pytest.approx(clock.now - last_beat)
    _ticks(fs, clock, 5, beat=False)
    assert fs.trips == 1  # one trip per episode
    assert [kind for kind, _ in events] == ["failover"]
    assert events[0][1]["cause"] == "stale"


def test_failsafe_excuses_a_stopped_process_once_per_beat(clock: FakeTime) -> None:
    fs = _failsafe()
    _ticks(fs, clock, 3, beat=True)
    clock.now += 0.005
    fs.heartbeat()
    # SIGSTOP for 500 ms: the watchdog's sleep wakes that late, having used no CPU
    clock.now += 0.505
    fs.stall_s += failsafe_module.unexplained_lateness(0.495, 0.0)
    fs.check()
    clock.now += 0.001
    fs.check()
    assert fs.trips == 0 and fs.starved == 1
    _ticks(fs, clock, 3, beat=True)
    assert fs.trips == 0 and fs.starved == 1


def test_failsafe_recovers_after_a_healthy_spell_only(clock: FakeTime) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    fs = _failsafe(events)
    fs.trip("controller exception in mid loop: RuntimeError", "exception")
    assert fs.plane.snapshot.passthrough
    _ticks(fs, clock, 499, beat=True)  # 4.99 s healthy
    assert fs.plane.snapshot.passthrough
    fs.trip("again", "exception")  # a new fault restarts the spell
    _ticks(fs, clock, 499, beat=True)
    assert fs.plane.snapshot.passthrough and fs.trips == 1
    _ticks(fs, clock, 2, beat=True)
    assert not fs.plane.snapshot.passthrough
    assert [kind for kind, _ in events] == ["failover", "recovered"]


def test_failsafe_leaves_the_users_switch_alone(clock: FakeTime) -> None:
    fs = _failsafe()
    fs.plane.set_passthrough(True)
    fs.trip("injected", "exception")
    _ticks(fs, clock, 600, beat=True)
    assert fs.plane.snapshot.passthrough and fs.plane.snapshot.failsafe_reason is None


def test_failsafe_survives_a_failing_event_sink(clock: FakeTime) -> None:
    def broken(kind: str, **fields: Any) -> None:
        raise OSError("disk full")

    fs = FailSafe(DataPlane("http://u"), FailsafeSettings(), CollectorRegistry(), broken)
    fs.trip("injected", "exception")
    assert fs.plane.snapshot.passthrough and fs.trips == 1


# -- the probe, on this machine -------------------------------------------------------------
def test_probe_reads_a_real_thread_or_says_it_cannot() -> None:
    found: list[ThreadProbe | None] = []
    done = threading.Event()

    def body() -> None:
        found.append(ThreadProbe.current())
        total = 0
        for i in range(200_000):  # run a little, so the CPU counter moves
            total += i
        done.wait(5)

    thread = threading.Thread(target=body)
    thread.start()
    while not found:
        time.sleep(0.001)
    probe = found[0]
    try:
        if probe is None:
            pytest.skip("no /proc/self/task/<tid>/schedstat here: only the stall is excused")
        first = probe.read(with_state=True)
        assert first is not None and first.run_s > 0 and first.runnable is not None
    finally:
        done.set()
        thread.join()
    # once the OS thread is gone too (a moment after join), the probe reads nothing
    deadline = time.monotonic() + 5
    while probe.read() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)


# -- the watchdog's first sample ----------------------------------------------------------
def test_tracker_judges_nothing_from_before_its_first_sample() -> None:
    # The controller beat, then the process was starved before the watchdog first woke
    # (listeners binding on a loaded machine): with no earlier sample there is no evidence
    # either way, so the age counts from the first sample. This tripped hostile tests on a
    # loaded machine, at serve's start: "no heartbeat for 164 ms", nothing excused.
    tracker = StalenessTracker()
    first = tracker.observe(WatchSample(1.000, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.800)
    assert first.heartbeat_age_s == 0.0 and not RULE.stale(first)
    later = tracker.observe(WatchSample(1.010, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.800)
    assert later.heartbeat_age_s == pytest.approx(0.010)
    # ... and a controller that stays silent is still a hang, dated from that sample
    hung = tracker.observe(WatchSample(1.090, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.800)
    assert hung.heartbeat_age_s == pytest.approx(0.090) and RULE.stale(hung)


def test_tracker_reports_how_long_the_controller_ran() -> None:
    # for the trip's message: a thread that ran was busy itself; one that did not, blocked
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, _sched(1.0, 0.5)), heartbeat_at=0.000)
    busy = tracker.observe(WatchSample(0.090, 0.0, _sched(1.08, 0.5)), heartbeat_at=0.000)
    assert busy.ran_s == pytest.approx(0.08)
    assert tracker.observe(WatchSample(0.100, 0.0), heartbeat_at=0.0).ran_s is None


def test_failsafe_first_tick_after_a_starved_start_does_not_trip(clock: FakeTime) -> None:
    fs = _failsafe()
    clock.now += 0.200  # beat at construction, then 200 ms before the first tick
    fs.check()
    assert fs.trips == 0
    _ticks(fs, clock, 7, beat=False)  # still silent 70 ms after that tick: within bound
    assert fs.trips == 0
    _ticks(fs, clock, 1, beat=False)
    assert fs.trips == 1


def test_a_controller_waiting_on_a_starved_gil_holder_is_starved_not_hung() -> None:
    # The reproduced trip: "no heartbeat for 265 ms (134 ms of it starved, its thread ran
    # 19 ms)": the rest the controller slept waiting for the GIL, held by the data plane's
    # thread while that waited for a CPU.
    plane = Evidence(heartbeat_age_s=265 * MS, stall_s=3 * MS, runqueue_wait_s=131 * MS,
                     plane_wait_s=120 * MS)
    assert not RULE.stale(plane) and RULE.excuses(plane)
    # without the data plane's wait the same figures are a hang
    assert RULE.stale(Evidence(heartbeat_age_s=265 * MS, stall_s=3 * MS,
                               runqueue_wait_s=131 * MS))
    # the stall and the data plane's wait measure one starvation: the larger counts once
    both = Evidence(heartbeat_age_s=300 * MS, stall_s=200 * MS, plane_wait_s=190 * MS)
    assert both.excused_s == pytest.approx(200 * MS) and RULE.stale(both)


def test_a_controller_holding_the_gil_is_still_hung() -> None:
    # the data plane waits on the GIL asleep (no run-queue wait), the controller runs C code
    hung = Evidence(heartbeat_age_s=90 * MS, runqueue_wait_s=0.0, ran_s=90 * MS,
                    plane_wait_s=0.0)
    assert RULE.stale(hung)


def test_tracker_counts_the_data_planes_wait_after_the_beat() -> None:
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, _sched(1.0, 0.5), _sched(5.0, 2.0, tid=3)),
                    heartbeat_at=0.000)
    evidence = tracker.observe(
        WatchSample(0.200, 0.0, _sched(1.01, 0.55), _sched(5.02, 2.15, tid=3)),
        heartbeat_at=0.010)
    assert evidence.plane_wait_s == pytest.approx(0.15)  # within the 190 ms after the beat
    later = tracker.observe(
        WatchSample(0.300, 0.0, _sched(1.02, 0.56), _sched(5.03, 2.60, tid=3)),
        heartbeat_at=0.010)
    assert later.plane_wait_s == pytest.approx(0.25)  # +0.45 clipped to the 100 ms window
    fresh = tracker.observe(
        WatchSample(0.310, 0.0, _sched(1.03, 0.56), _sched(5.04, 2.61, tid=3)),
        heartbeat_at=0.305)
    assert fresh.plane_wait_s == pytest.approx(0.005)  # a new beat starts from nothing
    unprobed = StalenessTracker().observe(WatchSample(0.0, 0.0), heartbeat_at=0.0)
    assert unprobed.plane_wait_s is None


# -- the garbage collector (gc_clock.py) ---------------------------------------------------
def test_a_garbage_collection_pause_is_excused_and_a_hang_after_it_is_not() -> None:
    # "no heartbeat for 145 ms (its thread ran 145 ms)": a full collection in the
    # controller's thread, as a CI run saw it; the thread ran, but inside the collector.
    collected = Evidence(heartbeat_age_s=145 * MS, ran_s=145 * MS, gc_s=120 * MS)
    assert not RULE.stale(collected) and RULE.excuses(collected)
    assert RULE.stale(Evidence(heartbeat_age_s=145 * MS, ran_s=145 * MS))
    assert RULE.stale(Evidence(heartbeat_age_s=300 * MS, ran_s=300 * MS, gc_s=120 * MS))
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.000, 0.0, gc_s=1.0), heartbeat_at=0.000)
    # a 300 ms collection that ended before the beat excuses nothing of the hang after it
    tracker.observe(WatchSample(0.310, 0.0, gc_s=1.300), heartbeat_at=0.305)
    evidence = tracker.observe(WatchSample(0.400, 0.0, gc_s=1.300), heartbeat_at=0.305)
    assert evidence.gc_s == pytest.approx(0.005) and RULE.stale(evidence)
    # one that followed the beat is excused
    tracker = StalenessTracker()
    tracker.observe(WatchSample(0.010, 0.0, gc_s=1.0), heartbeat_at=0.010)
    evidence = tracker.observe(WatchSample(0.150, 0.0, gc_s=1.130), heartbeat_at=0.010)
    assert evidence.heartbeat_age_s == pytest.approx(0.140)
    assert evidence.gc_s == pytest.approx(0.130) and not RULE.stale(evidence)


def test_gc_clock_measures_real_collections_between_start_and_stop() -> None:
    import gc

    from inferos.controller.gc_clock import GcClock

    clock = GcClock()
    gc.collect()
    assert clock.total_s == 0.0  # not started: nothing counted
    clock.start()
    clock.start()  # idempotent: one callback
    assert gc.callbacks.count(clock._on_gc) == 1
    junk = [[{"n": i}] for i in range(200_000)]  # many tracked objects: a slow collection
    before = clock.total_s  # building it already triggered collections
    started = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - started
    assert 0 < clock.total_s - before <= took
    clock.stop()
    counted = clock.total_s
    gc.collect()
    assert clock.total_s == counted and clock._on_gc not in gc.callbacks
    del junk


async def test_the_watchdog_counts_collections_while_it_runs_and_reports_them() -> None:
    import asyncio
    import gc

    from inferos.tasks import TaskGroup

    fs = _failsafe()
    tasks = TaskGroup()
    tasks.start(fs.watch(), name="watchdog")
    await asyncio.sleep(0.05)
    junk = [[{"n": i}] for i in range(100_000)]
    gc.collect()
    assert fs.describe()["gc_ms_total"] > 0  # type: ignore[operator]
    await tasks.stop()
    assert fs._gc._on_gc not in gc.callbacks  # removed with the watchdog
    del junk
