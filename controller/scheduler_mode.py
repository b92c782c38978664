"""Switching the engine's ``scheduler.mode`` live, from the slow loop: a pure decision on
frozen evidence, and the small state (samples, what was said) the controller keeps for it.

The engine places prefill and decode on the execution providers this machine has
(``scheduler.mode``, ``prefill_device``, ``decode_device``) and reports where they run
(its stats' ``scheduler.placement``). The controller may run another mode than the
policy's while a condition holds, and comes back when it clears:

- **A sustained queue** (``min_queue`` or more requests waiting in every sample for
  ``sustain_s``) while prefill and decode share one device: ``hybrid`` puts them on two,
  so the prompts of the queued requests stop taking turns with the running streams'
  decode steps. Only when the policy's ``prefill_device`` and ``decode_device`` both exist
  here and differ: otherwise hybrid would run what runs now.
- **Heat** (the machine's temperature sensor near its high mark, for ``sustain_s``): the
  work moves to the NPU, the low-power device, where this machine has one. Where no
  sensor reads (this machine), heat is ``None``: unknown, never taken for hot or cool.
- It returns to the policy's mode once its trigger has been clear for ``calm_s``; a user
  who asks for a mode (``POST /v1/policy``) ends a switch at once: their word wins.

A switch is made only when it would change what runs: on a machine with one device
every mode runs prefill and decode on it, so the decision says so and changes nothing.
The controller writes ``mode_switched`` for every switch (and return) with its evidence,
and ``mode_not_switched`` once per reason a trigger could not be acted on, not every tick.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from inferos.controller.backend_stats import Placement, SchedulerStats
from inferos.controller.policy import Policy, SchedulerPolicy
from inferos.controller.snapshot import ModeSwitch
from inferos.engine.engine_policy import DEVICE_PROVIDERS, device_of

__all__ = ["ModeDecision", "ModeEvidence", "ModeSample", "ModeSettings", "ModeSwitcher",
           "decide_mode", "devices_of", "ends_switch"]

# The single-device mode that runs everything on a device.
_ONLY = {"cpu": "cpu_only", "npu": "npu_only", "dml": "gpu_only", "igpu": "gpu_only",
         "cuda": "gpu_only"}
# The policy keys that say where the scheduler runs: a user's word on them ends a switch.
PLACEMENT_KEYS = ("mode", "prefill_device", "decode_device")
# Decision codes that mean "a trigger held, but nothing could be done": said once each.
NOT_SWITCHED = ("no_scheduler", "one_device", "no_target")


@dataclass(frozen=True, slots=True)
class ModeSettings:
    min_queue: int = 1        # requests waiting that make a queue
    sustain_s: float = 10.0   # a trigger must hold in every sample this long
    calm_s: float = 30.0      # and be gone this long before the switch is undone


@dataclass(frozen=True, slots=True)
class ModeSample:
    """One reading, every time the engine's stats are read (about once a second)."""

    at: float                 # monotonic seconds
    queue_depth: int | None   # None: the backend reported no scheduler
    hot: bool | None          # None: no temperature sensor reads here


@dataclass(frozen=True, slots=True)
class ModeEvidence:
    samples: tuple[ModeSample, ...]   # oldest first
    scheduler: SchedulerStats | None  # the latest report
    devices: frozenset[str]           # the scheduler's devices this engine can place on
    now: float

    def as_dict(self, settings: ModeSettings) -> dict[str, Any]:
        latest = self.samples[-1] if self.samples else None
        return {"scheduler": self.scheduler.as_dict() if self.scheduler else None,
                "devices": sorted(self.devices),
                "queue_held_s": _held_for(self.samples, _queued(settings), self.now),
                "thermal": None if latest is None else latest.hot,
                "samples": len(self.samples)}


@dataclass(frozen=True, slots=True)
class ModeDecision:
    mode: str | None          # the mode to run instead of the policy's; None: the policy's
    changed: bool             # differs from the switch in effect
    trigger: str | None       # "queue" | "thermal" | None
    code: str                 # quiet | holding | switched | returned | user | NOT_SWITCHED
    reason: str
    evidence: dict[str, Any]

    def as_event(self) -> dict[str, Any]:
        return {"mode": self.mode, "trigger": self.trigger, "code": self.code,
                "reason": self.reason, "evidence": self.evidence}


def devices_of(providers: Iterable[str], placement: Placement | None) -> frozenset[str]:
    """The scheduler's devices among onnxruntime ``providers`` and where ``placement``
    runs; providers that are no scheduler device (Azure's) are left out."""
    named = list(providers)
    if placement is not None:
        named += [p for p in (placement.prefill_provider, placement.decode_provider) if p]
    return frozenset(d for d in map(device_of, named) if d in DEVICE_PROVIDERS)


def ends_switch(patch: Any, before: Policy, after: Policy) -> bool:
    """A policy change ends a switch when it says where the scheduler runs: names one of
    ``PLACEMENT_KEYS`` (even with the value already asked) or changes one (a profile)."""
    scheduler = patch.get("scheduler") if isinstance(patch, dict) else None
    if isinstance(scheduler, dict) and any(k in scheduler for k in PLACEMENT_KEYS):
        return True
    return any(getattr(before.scheduler, k) != getattr(after.scheduler, k)
               for k in PLACEMENT_KEYS)


def _queued(settings: ModeSettings) -> Callable[[ModeSample], bool]:
    return lambda s: s.queue_depth is not None and s.queue_depth >= settings.min_queue


def _hot(sample: ModeSample) -> bool:
    return sample.hot is True


def _held_for(samples: tuple[ModeSample, ...], test: Callable[[ModeSample], bool],
              now: float) -> float:
    """How long ``test`` has held in every sample up to the newest (0: not now)."""
    since = None
    for sample in reversed(samples):
        if not test(sample):
            break
        since = sample.at
    return 0.0 if since is None else round(now - since, 3)


def _held(samples: tuple[ModeSample, ...], test: Callable[[ModeSample], bool],
          span_s: float, now: float) -> bool:
    """``test`` held in every sample of the last ``span_s``, and the samples reach back
    that far (a controller that just started has not seen a queue *sustained*)."""
    for sample in reversed(samples):
        if not test(sample):
            return False
        if sample.at <= now - span_s:
            return True
    return False


def _in_use(placement: Placement) -> frozenset[str]:
    return devices_of((), placement)


def _target(trigger: str, asked: SchedulerPolicy, seen: ModeEvidence,
            placement: Placement) -> tuple[str | None, str]:
    running = _in_use(placement)
    if trigger == "thermal":
        if "npu" not in seen.devices:
            return None, "no cooler device to move to (no NPU here)"
        if running == {"npu"}:
            return None, "everything already runs on the NPU"
        return "npu_only", "moving the work to the NPU, the low-power device"
    if len(running) >= 2:
        return None, ("prefill and decode already run on two devices "
                      f"({', '.join(sorted(running))})")
    if asked.prefill_device == asked.decode_device:
        return None, (f"hybrid would run both on {asked.prefill_device} "
                      "(scheduler.prefill_device = decode_device)")
    missing = [d for d in (asked.prefill_device, asked.decode_device) if d not in seen.devices]
    if missing:
        return None, (f"hybrid would run prefill on {asked.prefill_device} and decode on "
                      f"{asked.decode_device}; {', '.join(missing)} is not on this machine")
    if asked.mode == "hybrid":
        return None, f"hybrid is asked already and fell back: {placement.reason or 'unknown'}"
    return "hybrid", (f"prefill on {asked.prefill_device} and decode on "
                      f"{asked.decode_device}, so queued prompts stop taking turns with "
                      "the running streams")


def decide_mode(asked: SchedulerPolicy, switched: ModeSwitch | None, seen: ModeEvidence,
                settings: ModeSettings = ModeSettings()) -> ModeDecision:
    """The mode to run now: the policy's (``mode`` None) or a switch, and why. Pure."""
    evidence = seen.as_dict(settings)
    samples, now = seen.samples, seen.now
    queued = _queued(settings)

    def decision(mode: str | None, code: str, reason: str,
                 trigger: str | None = None) -> ModeDecision:
        current = switched.mode if switched is not None else None
        return ModeDecision(mode, mode != current, trigger, code, reason, evidence)

    if switched is not None:
        if switched.asked != asked.mode:
            return decision(None, "user", f"the user asked for {asked.mode}: their word wins")
        if switched.trigger == "thermal":
            cleared = _held(samples, lambda s: not _hot(s), settings.calm_s, now)
        else:
            cleared = _held(samples, lambda s: not queued(s), settings.calm_s, now)
        what = "the heat" if switched.trigger == "thermal" else "the queue"
        if cleared:
            return decision(None, "returned", f"{what} has been clear for "
                                              f"{settings.calm_s:g} s: back to {asked.mode}")
        return decision(switched.mode, "holding", f"keeping {switched.mode} until {what} "
                        f"has cleared for {settings.calm_s:g} s", switched.trigger)

    if _held(samples, _hot, settings.sustain_s, now):
        trigger, why = "thermal", f"hot for {settings.sustain_s:g} s"
    elif _held(samples, queued, settings.sustain_s, now):
        depth = samples[-1].queue_depth
        trigger, why = "queue", f"{depth} requests waiting, a queue for {settings.sustain_s:g} s"
    else:
        latest = samples[-1] if samples else None
        heat = ("temperature not measured" if latest is None or latest.hot is None
                else "not hot")
        return decision(None, "quiet", f"no sustained queue; {heat}")
    placement = seen.scheduler.placement if seen.scheduler is not None else None
    if placement is None:
        return decision(None, "no_scheduler", f"{why}, but the backend reports no "
                        "placement: there is no mode to switch", trigger)
    if len(seen.devices) < 2:
        only = ", ".join(sorted(seen.devices)) or "unknown"
        return decision(None, "one_device", f"{why}, but this machine has one device "
                        f"({only}): every mode runs prefill and decode on it, so switching "
                        "would change nothing", trigger)
    target, how = _target(trigger, asked, seen, placement)
    if target is None:
        return decision(None, "no_target", f"{why}, but {how}", trigger)
    return decision(target, "switched", f"{why}: {target}, {how}", trigger)


class ModeSwitcher:
    """The samples the decision weighs, its last answer, and its events (once per reason
    for what it could not do). Used from the controller's thread only."""

    def __init__(self, settings: ModeSettings, event: Callable[..., None]) -> None:
        self.settings = settings
        self.event = event
        self.providers: tuple[str, ...] = ()   # the engine's onnxruntime providers
        self.last: ModeDecision | None = None
        self._samples: collections.deque[ModeSample] = collections.deque()
        self._said: set[str] = set()

    def observe(self, scheduler: SchedulerStats | None, hot: bool | None, now: float) -> None:
        self._samples.append(ModeSample(now, scheduler.queue_depth if scheduler else None, hot))
        horizon = now - max(self.settings.sustain_s, self.settings.calm_s)
        # Keeps one sample at or before the horizon: the window must be seen covered.
        while len(self._samples) > 1 and self._samples[1].at <= horizon:
            self._samples.popleft()

    def evidence(self, scheduler: SchedulerStats | None, now: float) -> ModeEvidence:
        placement = scheduler.placement if scheduler is not None else None
        return ModeEvidence(tuple(self._samples), scheduler,
                            devices_of(self.providers, placement), now)

    def decide(self, asked: SchedulerPolicy, switched: ModeSwitch | None,
               scheduler: SchedulerStats | None, now: float) -> ModeDecision:
        decision = decide_mode(asked, switched, self.evidence(scheduler, now), self.settings)
        self.last = decision
        if decision.changed:
            self.event("mode_switched", before=switched.mode if switched else asked.mode,
                       after=decision.mode or asked.mode, **decision.as_event())
        elif decision.code in NOT_SWITCHED and decision.code not in self._said:
            self._said.add(decision.code)
            self.event("mode_not_switched", **decision.as_event())
        return decision
