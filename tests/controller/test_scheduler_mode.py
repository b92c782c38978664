"""The live scheduler-mode switch: a pure decision on frozen evidence. A sustained queue on
one shared device runs hybrid where two devices exist, heat moves work to the NPU, the
policy's mode comes back when the trigger clears or the user speaks, and a machine with
one device (this one) never switches and says why once."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnxruntime as ort
import pytest

from inferos.controller import backend as b
from inferos.controller import policy_report
from inferos.controller.backend import Capabilities, Capability, Outcome
from inferos.controller.backend_stats import Placement, SchedulerStats
from inferos.controller.policy import SCHEDULER_MODES, Policy, SchedulerPolicy, apply_patch
from inferos.controller.scheduler_mode import (
    ModeEvidence,
    ModeSample,
    ModeSettings,
    ModeSwitcher,
    decide_mode,
    devices_of,
    ends_switch,
)
from inferos.controller.snapshot import BackendSettings, ModeSwitch, PolicySnapshot

CPU = "CPUExecutionProvider"
DML = "DmlExecutionProvider"
SETTINGS = ModeSettings(min_queue=1, sustain_s=10.0, calm_s=30.0)
# gpu_only asked, with a hybrid that would split: prefill on DirectML, decode on the CPU.
GPU_ONLY = SchedulerPolicy(mode="gpu_only", prefill_device="dml", decode_device="cpu")
ON_DML = Placement(False, None, DML, DML)
FELL_BACK = Placement(True, "dml is not available on this machine; prefill runs on cpu",
                      CPU, CPU)


def _samples(depths: list[int | None], hot: bool | None = None, start: float = 0.0
             ) -> tuple[ModeSample, ...]:
    """One sample a second, as the controller reads the engine's stats."""
    return tuple(ModeSample(start + i, depth, hot) for i, depth in enumerate(depths))


def _seen(samples: tuple[ModeSample, ...], placement: Placement | None = ON_DML,
          devices: frozenset[str] = frozenset({"dml", "cpu"})) -> ModeEvidence:
    scheduler = SchedulerStats(samples[-1].queue_depth if samples else None, 40.0, 1.0, 8,
                               placement)
    return ModeEvidence(samples, scheduler, devices, samples[-1].at if samples else 0.0)


def test_a_sustained_queue_on_one_shared_device_switches_to_hybrid() -> None:
    decision = decide_mode(GPU_ONLY, None, _seen(_samples([3] * 12)), SETTINGS)
    assert (decision.mode, decision.changed, decision.trigger, decision.code) == (
        "hybrid", True, "queue", "switched")
    assert "3 requests waiting" in decision.reason
    assert decision.evidence["queue_held_s"] == 11.0
    assert decision.evidence["scheduler"]["placement"]["prefill_provider"] == DML
    assert decision.evidence["thermal"] is None  # not measured: null, not "cool"


@pytest.mark.parametrize("depths", [
    [3] * 9,                 # not yet 10 s of it
    [3] * 5 + [0] + [3] * 6,  # a gap: not sustained
    [None] * 12,             # the backend reports no queue
    [0] * 12,
])
def test_no_sustained_queue_changes_nothing(depths: list[int | None]) -> None:
    decision = decide_mode(GPU_ONLY, None, _seen(_samples(depths)), SETTINGS)
    assert (decision.mode, decision.changed, decision.code) == (None, False, "quiet")
    assert "temperature not measured" in decision.reason


@pytest.mark.parametrize("asked", [SchedulerPolicy(mode=m) for m in SCHEDULER_MODES])
def test_one_device_never_switches_and_says_why(asked: SchedulerPolicy) -> None:
    seen = _seen(_samples([5] * 12, hot=True), FELL_BACK, devices=frozenset({"cpu"}))
    decision = decide_mode(asked, None, seen, SETTINGS)
    assert (decision.mode, decision.changed, decision.code) == (None, False, "one_device")
    assert "one device (cpu)" in decision.reason and "change nothing" in decision.reason


def test_on_this_machine_it_never_switches() -> None:
    """The devices come from this onnxruntime's own providers: on a CPU-only machine the
    decision stays put whatever the queue, the heat or the mode asked."""
    devices = devices_of(ort.get_available_providers(), FELL_BACK)
    if devices != {"cpu"}:
        pytest.skip(f"this machine has more than the CPU: {sorted(devices)}")
    for asked in (SchedulerPolicy(mode=m) for m in SCHEDULER_MODES):
        for hot in (None, False, True):
            seen = _seen(_samples([9] * 40, hot=hot), FELL_BACK, devices)
            decision = decide_mode(asked, None, seen, SETTINGS)
            assert decision.mode is None and not decision.changed, (asked, hot, decision)


def test_devices_are_the_schedulers_own_names() -> None:
    assert devices_of(["AzureExecutionProvider", CPU], None) == {"cpu"}
    assert devices_of([CPU], ON_DML) == {"cpu", "dml"}
    assert devices_of([], Placement(False, None, None, None)) == frozenset()


@pytest.mark.parametrize(("asked", "placement", "devices", "why"), [
    (SchedulerPolicy(mode="hybrid", prefill_device="dml", decode_device="cpu"), ON_DML,
     {"dml", "cpu"}, "hybrid is asked already"),
    (SchedulerPolicy(mode="gpu_only", prefill_device="dml", decode_device="npu"), ON_DML,
     {"dml", "cpu"}, "npu is not on this machine"),
    (SchedulerPolicy(mode="gpu_only", prefill_device="dml", decode_device="dml"), ON_DML,
     {"dml", "cpu"}, "would run both on dml"),
    (GPU_ONLY, Placement(False, None, DML, CPU), {"dml", "cpu"}, "already run on two"),
])
def test_a_switch_that_would_change_nothing_is_not_made(
        asked: SchedulerPolicy, placement: Placement, devices: set[str], why: str) -> None:
    decision = decide_mode(asked, None, _seen(_samples([2] * 12), placement,
                                              frozenset(devices)), SETTINGS)
    assert (decision.mode, decision.changed, decision.code) == (None, False, "no_target")
    assert why in decision.reason


def test_heat_moves_the_work_to_the_npu_where_there_is_one() -> None:
    hot = _samples([0] * 12, hot=True)
    with_npu = decide_mode(GPU_ONLY, None, _seen(hot, devices=frozenset({"dml", "npu"})),
                           SETTINGS)
    assert (with_npu.mode, with_npu.trigger) == ("npu_only", "thermal")
    without = decide_mode(GPU_ONLY, None, _seen(hot), SETTINGS)
    assert without.mode is None and "no NPU here" in without.reason
    # heat wins over a queue: it protects the machine
    both = decide_mode(GPU_ONLY, None, _seen(_samples([4] * 12, hot=True),
                                             devices=frozenset({"dml", "npu", "cpu"})),
                       SETTINGS)
    assert both.trigger == "thermal"


def test_the_policys_mode_comes_back_when_the_queue_has_cleared() -> None:
    switch = ModeSwitch("hybrid", "gpu_only", "queue", "a queue")
    recent = _seen(_samples([3] * 12 + [0] * 10))
    holding = decide_mode(GPU_ONLY, switch, recent, SETTINGS)
    assert (holding.mode, holding.changed, holding.code) == ("hybrid", False, "holding")
    cleared = decide_mode(GPU_ONLY, switch, _seen(_samples([3] * 12 + [0] * 32)), SETTINGS)
    assert (cleared.mode, cleared.changed, cleared.code) == (None, True, "returned")
    assert "back to gpu_only" in cleared.reason
    # a user who asked for another mode since: their word wins at once
    user = decide_mode(dataclasses.replace(GPU_ONLY, mode="cpu_only"), switch, recent,
                       SETTINGS)
    assert (user.mode, user.changed, user.code) == (None, True, "user")


def test_a_thermal_switch_holds_while_hot_and_unknown_heat_is_not_heat() -> None:
    switch = ModeSwitch("npu_only", "gpu_only", "thermal", "hot")
    still_hot = _seen(_samples([0] * 40, hot=True), devices=frozenset({"dml", "npu"}))
    assert decide_mode(GPU_ONLY, switch, still_hot, SETTINGS).code == "holding"
    cooled = _seen(_samples([0] * 40, hot=False), devices=frozenset({"dml", "npu"}))
    assert decide_mode(GPU_ONLY, switch, cooled, SETTINGS).code == "returned"


def test_the_switcher_says_what_it_could_not_do_once() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    switcher = ModeSwitcher(SETTINGS, lambda kind, **fields: events.append((kind, fields)))
    switcher.providers = (CPU,)
    queue = SchedulerStats(6, 120.0, 1.0, 8, FELL_BACK)
    for second in range(120):
        switcher.observe(queue, None, float(second))
        decision = switcher.decide(SchedulerPolicy(), None, queue, float(second))
        assert decision.mode is None
    assert [kind for kind, _ in events] == ["mode_not_switched"]
    assert events[0][1]["code"] == "one_device" and events[0][1]["evidence"]["devices"] == [
        "cpu"]
    assert switcher.last is not None and switcher.last.code == "one_device"
    # samples older than the longest window are dropped (one kept to cover it)
    assert switcher.evidence(queue, 119.0).samples[0].at == 119.0 - 30.0


def test_the_switcher_announces_a_switch_and_its_return() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    switcher = ModeSwitcher(SETTINGS, lambda kind, **fields: events.append((kind, fields)))
    switcher.providers = (CPU, DML)
    switch: ModeSwitch | None = None
    for second in range(80):
        depth = 4 if second < 20 else 0
        stats = SchedulerStats(depth, None, 1.0, 8, ON_DML)
        switcher.observe(stats, None, float(second))
        decision = switcher.decide(GPU_ONLY, switch, stats, float(second))
        if decision.changed:
            switch = None if decision.mode is None else ModeSwitch(
                decision.mode, GPU_ONLY.mode, decision.trigger or "", decision.reason)
    switched = [fields for kind, fields in events if kind == "mode_switched"]
    assert [(e["before"], e["after"], e["code"]) for e in switched] == [
        ("gpu_only", "hybrid", "switched"), ("hybrid", "gpu_only", "returned")]
    assert switch is None


def test_a_users_word_on_placement_ends_a_switch() -> None:
    policy = apply_patch(Policy(), {"scheduler": {"mode": "gpu_only"}})
    same = apply_patch(policy, {"scheduler": {"mode": "gpu_only"}})
    assert ends_switch({"scheduler": {"mode": "gpu_only"}}, policy, same)
    assert ends_switch({"profile": "safe"}, policy, apply_patch(policy, {"profile": "safe"}))
    assert not ends_switch({"scheduler": {"max_batch": 4}}, policy,
                           apply_patch(policy, {"scheduler": {"max_batch": 4}}))
    assert not ends_switch({"kv": {"recent_window": 9}}, policy,
                           apply_patch(policy, {"kv": {"recent_window": 9}}))


def test_the_report_says_the_controller_runs_another_mode() -> None:
    policy = apply_patch(Policy(), {"scheduler": {"mode": "gpu_only"}})
    switch = ModeSwitch("hybrid", "gpu_only", "queue", "4 requests waiting")
    live = policy_report.live_keys(policy, switch)
    assert live["scheduler.mode"] == "hybrid"
    assert policy_report.live_keys(policy)["scheduler.mode"] == "gpu_only"
    caps = Capabilities("engine", None, {k: Capability(b.LIVE, "engine") for k in b.LIVE_KEYS})
    sent = Outcome("scheduler.mode", b.APPLIED, "hybrid", "hybrid", "engine control API")
    report = policy_report.build(policy, False, caps, None, {}, {"scheduler.mode": sent},
                                 switch)
    mode = report["scheduler.mode"]
    assert (mode["status"], mode["value"], mode["in_effect"]) == ("not_applied", "gpu_only",
                                                                  "hybrid")
    assert "4 requests waiting" in mode["reason"]
    before_ack = policy_report.build(policy, False, caps, None, {}, {}, switch)
    assert before_ack["scheduler.mode"]["status"] == "pending"
    # with no switch, the same acknowledgement of gpu_only is simply applied
    plain = Outcome("scheduler.mode", b.APPLIED, "gpu_only", "gpu_only", "engine control API")
    assert policy_report.build(policy, False, caps, None, {}, {"scheduler.mode": plain})[
        "scheduler.mode"]["status"] == "applied"


def test_a_snapshot_with_an_unknown_switched_mode_is_invalid() -> None:
    bad = PolicySnapshot(2, Policy(), BackendSettings(), "x",
                         mode_switch=ModeSwitch("warp", "hybrid", "queue", "x"))
    with pytest.raises(ValueError, match="warp"):
        bad.check()
