"""Policy: what the user (or a profile) asks of Infer-OS, as one frozen, validated value.

A policy is changed only by building a new one: ``apply_patch(policy, {"kv": {...}})``
validates every field of the patch and returns a new ``Policy`` or raises ``ConfigError``
naming the offending field (``kv.level_thresholds.L1_int8``); nothing is half-applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferos.errors import ConfigError

MODES = ("optimize", "passthrough")
PROFILES = ("safe", "balanced", "aggressive")
SCHEDULER_MODES = ("hybrid", "gpu_only", "npu_only", "cpu_only")
DEVICES = ("dml", "npu", "cpu", "cuda", "igpu")
# llama.cpp KV-cache types (--cache-type-k/-v); quantized V needs flash attention.
CACHE_TYPES = ("f16", "q8_0", "q4_0")
ENGINE_KV_PRECISIONS = ("fp32", "int8", "int4")


@dataclass(frozen=True, slots=True)
class LevelThresholds:
    L1_int8: float = 0.7
    L2_int4: float = 0.5
    L3_evict: float = 0.3

    def check(self) -> None:
        if not self.L1_int8 >= self.L2_int4 >= self.L3_evict:
            raise ConfigError("thresholds must satisfy L1_int8 >= L2_int4 >= L3_evict",
                              key="kv.level_thresholds")


@dataclass(frozen=True, slots=True)
class KvPolicy:
    recent_window: int = 64
    sink_tokens: int = 4
    level_thresholds: LevelThresholds = field(default_factory=LevelThresholds)
    cache_type: str = "f16"       # llama.cpp backends: --cache-type-k/-v
    allow_evict: bool = False     # L3 eviction within one long context


@dataclass(frozen=True, slots=True)
class IoPolicy:
    enable_iobinding: bool = True
    dml_pool_bytes: int = 2048 * 2**20
    host_pool_bytes: int = 4096 * 2**20


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    mode: str = "hybrid"
    prefill_device: str = "dml"
    decode_device: str = "npu"


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    max_delta_ppl: float = 0.5
    min_accept_rate: float = 0.5


@dataclass(frozen=True, slots=True)
class BackendPins:
    """Settings the user fixes by hand; None leaves the choice to the decision engine."""

    ctx_size: int | None = None
    threads: int | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str = "optimize"
    profile: str = "balanced"
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    kv: KvPolicy = field(default_factory=KvPolicy)
    io: IoPolicy = field(default_factory=IoPolicy)
    scheduler: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    backend: BackendPins = field(default_factory=BackendPins)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"must be one of {', '.join(choices)}; got {value!r}", key=key)
    return str(value)


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Type-check a patched leaf against the type of the value it replaces."""
    from inferos.controller.config import byte_size

    if key.endswith("_bytes"):
        try:
            return byte_size(value)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from exc
    if isinstance(current, bool) or (current is None and key.endswith(("allow_evict",))):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key=key)
        return value
    if isinstance(current, int) or (current is None and key in ("backend.ctx_size",
                                                                "backend.threads")):
        if value is None and current is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"expected a non-negative integer, got {value!r}", key=key)
        return value
    if isinstance(current, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", key=key)
        if not 0 <= float(value) <= 1e6:
            raise ConfigError(f"out of range: {value!r}", key=key)
        return float(value)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}", key=key)
    return value


def _patch(obj: Any, patch: Any, prefix: str) -> Any:
    if not isinstance(patch, dict):
        raise ConfigError("expected an object", key=prefix.rstrip(".") or "(body)")
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in patch.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError("unknown field", key=key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            changes[name] = _patch(current, value, key + ".")
        else:
            changes[name] = _coerce(value, current, key)
    return dataclasses.replace(obj, **changes)


def validate(policy: Policy) -> Policy:
    _check_choice(policy.mode, MODES, "mode")
    _check_choice(policy.profile, PROFILES, "profile")
    _check_choice(policy.kv.cache_type, CACHE_TYPES, "kv.cache_type")
    _check_choice(policy.scheduler.mode, SCHEDULER_MODES, "scheduler.mode")
    _check_choice(policy.scheduler.prefill_device, DEVICES, "scheduler.prefill_device")
    _check_choice(policy.scheduler.decode_device, DEVICES, "scheduler.decode_device")
    policy.kv.level_thresholds.check()
    if policy.kv.recent_window < 1:
        raise ConfigError("must be at least 1", key="kv.recent_window")
    if not 0 < policy.quality.min_accept_rate <= 1:
        raise ConfigError("must be in (0, 1]", key="quality.min_accept_rate")
    if policy.backend.ctx_size is not None and policy.backend.ctx_size < 256:
        raise ConfigError("must be at least 256 tokens", key="backend.ctx_size")
    if policy.backend.threads is not None and policy.backend.threads < 1:
        raise ConfigError("must be at least 1", key="backend.threads")
    return policy


def apply_patch(policy: Policy, patch: Any,
                profiles: Mapping[str, Policy] | None = None) -> Policy:
    """A new policy with ``patch`` applied (a profile first, then explicit fields).
    ``profiles`` are the named bundles in use (the built-ins, as adjusted by the config)."""
    from inferos.controller.profiles import PROFILE_POLICIES

    if not isinstance(patch, dict):
        raise ConfigError("expected a JSON object", key="(body)")
    bundles = PROFILE_POLICIES if profiles is None else profiles
    base = policy
    if "profile" in patch:
        name = _check_choice(patch["profile"], PROFILES, "profile")
        base = dataclasses.replace(bundles[name], mode=policy.mode, backend=policy.backend)
    rest = {k: v for k, v in patch.items() if k != "profile"}
    return validate(_patch(base, rest, ""))
