"""Policy: what the user (or a profile) asks of Infer-OS, as one frozen, validated value.

Every leaf of ``Policy`` is a policy setting of ``setting_table.SETTINGS``: its default
comes from there, and so do the type, bounds and choices ``apply_patch`` checks. A policy
is changed only by building a new one: ``apply_patch(policy, {"kv": {...}})`` validates
every field of the patch and returns a new ``Policy`` or raises ``ConfigError`` naming the
offending field (``kv.level_thresholds.L1_int8``); nothing is half-applied. Whatever a
client sends (unknown keys, wrong types, huge numbers, deep nesting), ``ConfigError`` is
the only exception: the walk goes no deeper than the policy itself.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferos.controller.setting_table import (
    CACHE_TYPE_NAMES,
    DEVICES,
    MODES,
    POLICY_SETTINGS,
    PROFILES,
    SCHEDULER_MODES,
    Setting,
)
from inferos.errors import ConfigError

__all__ = [
    "CACHE_TYPE_NAMES", "DEVICES", "MODES", "PROFILES", "SCHEDULER_MODES",
    "BackendPins", "IoPolicy", "KvPolicy", "LevelThresholds", "Policy", "QualityPolicy",
    "SchedulerPolicy", "SpeculationPolicy", "apply_patch", "flatten", "policy_keys", "validate",
]



def _default(key: str) -> Any:
    return POLICY_SETTINGS[key].default


@dataclass(frozen=True, slots=True)
class LevelThresholds:
    L1_int8: float = _default("kv.level_thresholds.L1_int8")
    L2_int4: float = _default("kv.level_thresholds.L2_int4")
    L3_evict: float = _default("kv.level_thresholds.L3_evict")

    def check(self) -> None:
        if not self.L1_int8 >= self.L2_int4 >= self.L3_evict:
            raise ConfigError("thresholds must satisfy L1_int8 >= L2_int4 >= L3_evict",
                              key="kv.level_thresholds")


@dataclass(frozen=True, slots=True)
class KvPolicy:
    recent_window: int = _default("kv.recent_window")
    sink_tokens: int = _default("kv.sink_tokens")
    level_thresholds: LevelThresholds = field(default_factory=LevelThresholds)
    cache_type: str = _default("kv.cache_type")      # llama.cpp backends: --cache-type-k/-v
    allow_evict: bool = _default("kv.allow_evict")   # L3 eviction within one long context


@dataclass(frozen=True, slots=True)
class IoPolicy:
    enable_iobinding: bool = _default("io.enable_iobinding")
    dml_pool_bytes: int = _default("io.dml_pool_bytes")
    host_pool_bytes: int = _default("io.host_pool_bytes")


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    mode: str = _default("scheduler.mode")
    prefill_device: str = _default("scheduler.prefill_device")
    decode_device: str = _default("scheduler.decode_device")
    max_batch: int = _default("scheduler.max_batch")
    max_queue: int = _default("scheduler.max_queue")
    tpot_budget_ms: float = _default("scheduler.tpot_budget_ms")


@dataclass(frozen=True, slots=True)
class SpeculationPolicy:
    enabled: bool = _default("speculation.enabled")
    max_draft: int = _default("speculation.max_draft")


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    max_delta_ppl: float = _default("quality.max_delta_ppl")
    min_accept_rate: float = _default("quality.min_accept_rate")


@dataclass(frozen=True, slots=True)
class BackendPins:
    """Settings the user fixes by hand; None leaves the choice to the decision engine."""

    ctx_size: int | None = _default("backend.ctx_size")
    threads: int | None = _default("backend.threads")
    provider: str | None = _default("backend.provider")


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str = _default("mode")
    profile: str = _default("profile")
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    kv: KvPolicy = field(default_factory=KvPolicy)
    io: IoPolicy = field(default_factory=IoPolicy)
    scheduler: SchedulerPolicy = field(default_factory=SchedulerPolicy)
    speculation: SpeculationPolicy = field(default_factory=SpeculationPolicy)
    backend: BackendPins = field(default_factory=BackendPins)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def policy_keys() -> tuple[str, ...]:
    """Every policy leaf key, dotted (``mode``, ``kv.level_thresholds.L1_int8``), in the
    table's order."""
    return tuple(POLICY_SETTINGS)


def flatten(policy: Policy) -> dict[str, Any]:
    """Dotted policy key -> value, for every key of ``policy_keys()``."""
    return {key: operator.attrgetter(key)(policy) for key in POLICY_SETTINGS}


# The policy's shape as a tree of sections, derived from the dotted keys: a patch is
# walked against it, so its depth bounds the walk whatever the patch's depth.
_Tree = dict[str, "Setting | _Tree"]


def _tree() -> _Tree:
    root: _Tree = {}
    for key, setting in POLICY_SETTINGS.items():
        node = root
        *sections, leaf = key.split(".")
        for name in sections:
            child = node.setdefault(name, {})
            assert isinstance(child, dict)
            node = child
        node[leaf] = setting
    return root


_TREE = _tree()


def _field_name(prefix: str, name: Any) -> str:
    text = name if isinstance(name, str) else repr(name)
    if len(text) > 64:
        text = text[:64] + "…"
    return f"{prefix}.{text}" if prefix else text


def _collect(patch: Any, tree: _Tree, prefix: str, out: dict[str, Any]) -> None:
    if not isinstance(patch, dict):
        raise ConfigError("expected an object", key=prefix or "(body)")
    for name, value in patch.items():
        key = _field_name(prefix, name)
        node = tree.get(name) if isinstance(name, str) else None
        if node is None:
            raise ConfigError(f"unknown field; expected one of {', '.join(tree)}", key=key)
        if isinstance(node, dict):
            _collect(value, node, key, out)
            continue
        try:
            out[key] = node.parse(value, strict=True)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from None


def _replace(obj: Any, changes: Mapping[str, Any], prefix: str) -> Any:
    updates: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            if any(k.startswith(key + ".") for k in changes):
                updates[f.name] = _replace(current, changes, key + ".")
        elif key in changes:
            updates[f.name] = changes[key]
    return dataclasses.replace(obj, **updates) if updates else obj


def validate(policy: Policy) -> Policy:
    """``policy`` itself, if every value is of its declared type and within its bounds and
    the thresholds are ordered; else ``ConfigError`` naming the first bad key."""
    for key, value in flatten(policy).items():
        try:
            POLICY_SETTINGS[key].parse(value, strict=True)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from None
    policy.kv.level_thresholds.check()
    return policy


def apply_patch(policy: Policy, patch: Any,
                profiles: Mapping[str, Policy] | None = None) -> Policy:
    """A new policy with ``patch`` applied (a profile first, then explicit fields).
    ``profiles`` are the named bundles in use (the built-ins, as adjusted by the config)."""
    from inferos.controller.profiles import PROFILE_POLICIES

    if not isinstance(patch, dict):
        raise ConfigError("expected a JSON object", key="(body)")
    changes: dict[str, Any] = {}
    _collect(patch, _TREE, "", changes)
    base = policy
    if "profile" in changes:
        bundles = PROFILE_POLICIES if profiles is None else profiles
        name = changes.pop("profile")
        if name not in bundles:
            raise ConfigError(f"no such profile in use: {name}", key="profile")
        base = dataclasses.replace(bundles[name], mode=policy.mode, backend=policy.backend)
    return validate(_replace(base, changes, ""))

