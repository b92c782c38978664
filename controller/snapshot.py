"""Versioned, immutable policy snapshots, swapped whole.

The data plane reads ``SnapshotStore.current`` once per request without a lock: a single
attribute read of an immutable object is atomic. Only the controller publishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferos.controller.policy import SCHEDULER_MODES, Policy, validate


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What needs a reload or a new process to change. None = the backend's own default.
    (What the running embedded engine takes live — KV window, thresholds, pools — is in
    the policy itself, sent through the engine's control API.)"""

    ctx_size: int | None = None
    cache_type: str = "f16"       # llama.cpp's --cache-type-k and -v (one value for both)
    threads: int | None = None
    provider: str | None = None

    @property
    def flash_attn(self) -> bool:
        return self.cache_type != "f16"  # a quantized V cache needs flash attention

    def llamacpp_args(self) -> str:
        """The ``llamacpp_args`` string Lemonade's /load takes (no ctx-size: its own field)."""
        args = [f"--cache-type-k {self.cache_type}", f"--cache-type-v {self.cache_type}"]
        if self.flash_attn:
            args.append("-fa on")
        if self.threads:
            args.append(f"--threads {self.threads}")
        return " ".join(args)

    def as_dict(self) -> dict[str, object]:
        return {"ctx_size": self.ctx_size, "cache_type": self.cache_type,
                "flash_attn": self.flash_attn, "threads": self.threads,
                "provider": self.provider}


@dataclass(frozen=True, slots=True)
class ModeSwitch:
    """The controller's live switch of ``scheduler.mode`` away from the policy's ``asked``
    (controller/scheduler_mode.py): sent to the engine instead of the policy's value until
    its ``trigger`` (a sustained queue, heat) clears or the user asks for another mode."""

    mode: str
    asked: str
    trigger: str      # "queue" | "thermal"
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "asked": self.asked, "trigger": self.trigger,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: int
    policy: Policy
    backend: BackendSettings
    reason: str
    created: float = field(default_factory=time.time)
    mode_switch: ModeSwitch | None = None

    def check(self) -> None:
        """Raises ConfigError if the snapshot is not something the data plane may use."""
        validate(self.policy)
        if self.version < 0:
            raise ValueError("negative snapshot version")
        if self.mode_switch is not None and self.mode_switch.mode not in SCHEDULER_MODES:
            raise ValueError(f"no such scheduler mode: {self.mode_switch.mode!r}")


class SnapshotStore:
    def __init__(self, first: PolicySnapshot) -> None:
        first.check()
        self.current = first
        self.history: list[PolicySnapshot] = [first]

    def publish(self, policy: Policy, backend: BackendSettings, reason: str, *,
                mode_switch: ModeSwitch | None) -> PolicySnapshot:
        """The next version; ``mode_switch`` is said every time (None ends a switch), so a
        publisher cannot drop one by forgetting it."""
        snapshot = PolicySnapshot(self.current.version + 1, policy, backend, reason,
                                  mode_switch=mode_switch)
        snapshot.check()  # an invalid snapshot never becomes current
        self.current = snapshot
        self.history = [*self.history[-49:], snapshot]
        return snapshot
