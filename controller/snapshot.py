"""Versioned, immutable policy snapshots, swapped whole.

The data plane reads ``SnapshotStore.current`` once per request without a lock: a single
attribute read of an immutable object is atomic. Only the controller publishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferos.controller.policy import Policy, validate


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the backend should run with. None = leave the backend's own default."""

    ctx_size: int | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = False
    threads: int | None = None
    provider: str | None = None
    # The embedded engine's KV store (llama.cpp and Lemonade have none): what parked KV may
    # hold before it is demoted, and whether one long context may evict tokens.
    host_pool_bytes: int | None = None
    kv_allow_evict: bool = False

    def llamacpp_args(self) -> str:
        """The ``llamacpp_args`` string Lemonade's /load takes (no ctx-size: its own field)."""
        args = [f"--cache-type-k {self.cache_type_k}", f"--cache-type-v {self.cache_type_v}"]
        if self.flash_attn:
            args.append("-fa on")
        if self.threads:
            args.append(f"--threads {self.threads}")
        return " ".join(args)


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: int
    policy: Policy
    backend: BackendSettings
    reason: str
    created: float = field(default_factory=time.time)

    def check(self) -> None:
        """Raises ConfigError if the snapshot is not something the data plane may use."""
        validate(self.policy)
        if self.version < 0:
            raise ValueError("negative snapshot version")


class SnapshotStore:
    def __init__(self, first: PolicySnapshot) -> None:
        first.check()
        self.current = first
        self.history: list[PolicySnapshot] = [first]

    def publish(self, policy: Policy, backend: BackendSettings, reason: str) -> PolicySnapshot:
        snapshot = PolicySnapshot(self.current.version + 1, policy, backend, reason)
        snapshot.check()  # an invalid snapshot never becomes current
        self.current = snapshot
        self.history = [*self.history[-49:], snapshot]
        return snapshot
