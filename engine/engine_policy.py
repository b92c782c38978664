"""The engine's live policy: the settings that take effect without a restart, versioned.

``EnginePolicy`` is one frozen value: the KV window, sinks and level thresholds of the
prefix cache's store, eviction inside a context, the store's byte budget, the quality
budget, the scheduler's placement, batch, queue and time-per-token budget, and
prompt-lookup speculation. ``POST /inferos/v1/policy`` (engine/policy_routes.py)
replaces the whole value; the model's worker thread reads it at its next KV-store
operation (engine/runtime.py). What needs a new process (model, weights precision,
context size, threads, provider) is not here: that goes through ``load`` or blue/green.

``POLICY_KEYS`` is the one table of the keys a body carries, by dotted name, with their
parsers; ``parse_policy`` and ``dotted`` (the leaf keys acks and stats report, the three
thresholds each on its own: ``DOTTED_KEYS``) derive from it. A body names every key (a partial
policy is the controller's business: it sends what it resolved), and a key the engine does
not know is refused, so nothing is accepted silently.

The scheduler's closed sets (modes, devices and the onnxruntime providers each device
means) are declared here, where the engine turns them into what runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from inferos.engine.api_errors import ApiError, invalid_param
from inferos.engine.memory_budget import default_host_pool_bytes, machine_memory
from inferos.errors import ConfigError
from inferos.kvstore.levels import DEFAULT_RECENT_WINDOW, DEFAULT_SINK_TOKENS, LevelThresholds
from inferos.kvstore.store import KvStoreConfig

__all__ = [
    "DEFAULT_HOST_POOL_BYTES",
    "DEFAULT_MAX_DELTA_PPL",
    "DEVICE_PROVIDERS",
    "DOTTED_KEYS",
    "POLICY_KEYS",
    "SCHEDULER_MODES",
    "THRESHOLD_KEYS",
    "EnginePolicy",
    "PolicyKey",
    "device_of",
    "dotted",
    "parse_policy",
    "parse_thresholds",
]

# The policy's io.host_pool_bytes default, sized from this machine: min(4 GiB, MemTotal/8)
# (engine/memory_budget.py). A fixed 4 GiB of float32 KV grew the engine by 829 MiB in ten
# minutes on a soak (issue 11); an explicit io.host_pool_bytes still wins.
DEFAULT_HOST_POOL_BYTES: Final = default_host_pool_bytes(machine_memory())
DEFAULT_MAX_DELTA_PPL: Final = 0.5
DEFAULT_MIN_ACCEPT_RATE: Final = 0.5
DEFAULT_MAX_BATCH: Final = 8
MAX_BATCH_LIMIT: Final = 16  # the rows the batch buffer is sized for (engine/batch_kv.py)
DEFAULT_MAX_QUEUE: Final = 32
DEFAULT_TPOT_BUDGET_MS: Final = 100.0
DEFAULT_MAX_DRAFT: Final = 8
# Larger windows or pools than this are typing mistakes, not settings.
MAX_TOKENS_SETTING: Final = 1 << 30
MAX_POOL_BYTES: Final = 1 << 50

SCHEDULER_MODES: Final = ("hybrid", "gpu_only", "npu_only", "cpu_only")
DEVICE_PROVIDERS: Final[Mapping[str, tuple[str, ...]]] = {
    "cpu": ("CPUExecutionProvider",),
    "dml": ("DmlExecutionProvider",),
    "igpu": ("DmlExecutionProvider",),
    "cuda": ("CUDAExecutionProvider",),
    "npu": (),  # no NPU execution provider is used by this engine
}
"""Each scheduler device and the onnxruntime providers that run on it."""


def device_of(provider: str) -> str:
    """The scheduler's name for the device an onnxruntime provider runs on."""
    return next((d for d, providers in DEVICE_PROVIDERS.items() if provider in providers),
                provider)


@dataclass(frozen=True)
class EnginePolicy:
    """The live settings in effect, and the version that set them (0: the start values)."""

    version: int = 0
    recent_window: int = DEFAULT_RECENT_WINDOW
    sink_tokens: int = DEFAULT_SINK_TOKENS
    thresholds: LevelThresholds = LevelThresholds()
    allow_evict: bool = False
    host_pool_bytes: int = DEFAULT_HOST_POOL_BYTES
    max_delta_ppl: float = DEFAULT_MAX_DELTA_PPL
    min_accept_rate: float = DEFAULT_MIN_ACCEPT_RATE
    scheduler_mode: str = "cpu_only"
    prefill_device: str = "cpu"
    decode_device: str = "cpu"
    max_batch: int = DEFAULT_MAX_BATCH
    max_queue: int = DEFAULT_MAX_QUEUE
    tpot_budget_ms: float = DEFAULT_TPOT_BUDGET_MS
    speculation: bool = True
    max_draft: int = DEFAULT_MAX_DRAFT

    def store_config(self, base: KvStoreConfig) -> KvStoreConfig:
        """``base`` (a store's config) with this policy's window, sinks, thresholds, pool."""
        return replace(base, recent_window=self.recent_window, sink_tokens=self.sink_tokens,
                       thresholds=self.thresholds, host_pool_bytes=self.host_pool_bytes)

    def same_settings(self, other: EnginePolicy) -> bool:
        """True when ``other`` differs at most in its version."""
        return replace(other, version=self.version) == self

    @classmethod
    def starting(cls, provider: str, **values: Any) -> EnginePolicy:
        """Version 0: ``values`` (the engine's flags), the scheduler as it runs on
        ``provider`` (one provider for prefill and decode: nothing is pretended)."""
        device = device_of(provider)
        mode = "cpu_only" if device == "cpu" else "npu_only" if device == "npu" else "gpu_only"
        return cls(version=0, scheduler_mode=mode, prefill_device=device,
                   decode_device=device, **values)


# -- the table of keys ----------------------------------------------------------------

Parser = Callable[[str, Any], Any]


def _integer(low: int, high: int) -> Parser:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_param(key, f"'{key}' must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise invalid_param(key, f"'{key}' must be in [{low}, {high}], got {value}")
        return value
    return parse


def _number(low: float, high: float) -> Parser:
    def parse(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise invalid_param(key, f"'{key}' must be a finite number, got {value!r}")
        if not low <= value <= high:
            raise invalid_param(key, f"'{key}' must be in [{low}, {high}], got {value}")
        return float(value)
    return parse


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_param(key, f"'{key}' must be true or false, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise invalid_param(key, f"'{key}' must be one of {', '.join(choices)}, "
                                     f"got {value!r}")
        return value
    return parse


THRESHOLD_NAMES: Final = ("L1_int8", "L2_int4", "L3_evict")


def _thresholds(key: str, value: Any) -> LevelThresholds:
    if not isinstance(value, dict):
        raise invalid_param(key, f"'{key}' must be an object with {', '.join(THRESHOLD_NAMES)}")
    _exact_keys(key, value, THRESHOLD_NAMES)
    # Any finite score: importance lies in [-eta, 1], so a threshold below 0 can keep
    # even stale blocks exact.
    number = _number(-1e6, 1e6)
    values = [number(f"{key}.{name}", value[name]) for name in THRESHOLD_NAMES]
    try:
        return LevelThresholds(*values)
    except ConfigError as exc:
        raise invalid_param(key, f"'{key}' {exc.reason}") from exc


@dataclass(frozen=True)
class PolicyKey:
    """One key of a policy body: its dotted name, the field it sets, its parser."""

    name: str
    field: str
    parse: Parser

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def leaf(self) -> str:
        return self.name.split(".", 1)[1]


POLICY_KEYS: Final = (
    PolicyKey("kv.recent_window", "recent_window", _integer(0, MAX_TOKENS_SETTING)),
    PolicyKey("kv.sink_tokens", "sink_tokens", _integer(0, MAX_TOKENS_SETTING)),
    PolicyKey("kv.level_thresholds", "thresholds", _thresholds),
    PolicyKey("kv.allow_evict", "allow_evict", _boolean),
    PolicyKey("io.host_pool_bytes", "host_pool_bytes", _integer(1, MAX_POOL_BYTES)),
    PolicyKey("quality.max_delta_ppl", "max_delta_ppl", _number(0.0, 1e6)),
    PolicyKey("quality.min_accept_rate", "min_accept_rate", _number(0.0, 1.0)),
    PolicyKey("scheduler.mode", "scheduler_mode", _choice(SCHEDULER_MODES)),
    PolicyKey("scheduler.prefill_device", "prefill_device", _choice(tuple(DEVICE_PROVIDERS))),
    PolicyKey("scheduler.decode_device", "decode_device", _choice(tuple(DEVICE_PROVIDERS))),
    PolicyKey("scheduler.max_batch", "max_batch", _integer(1, MAX_BATCH_LIMIT)),
    PolicyKey("scheduler.max_queue", "max_queue", _integer(0, 4096)),
    PolicyKey("scheduler.tpot_budget_ms", "tpot_budget_ms", _number(1.0, 60_000.0)),
    PolicyKey("speculation.enabled", "speculation", _boolean),
    PolicyKey("speculation.max_draft", "max_draft", _integer(1, 64)),
)
SECTIONS: Final = tuple(dict.fromkeys(k.section for k in POLICY_KEYS))


def _exact_keys(where: str, body: Mapping[str, Any], names: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise invalid_param(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown key '{unknown[0]}'" + (f" in '{where}'" if where else "")
                            + f"; expected {', '.join(names)}")
    missing = [n for n in names if n not in body]
    if missing:
        raise invalid_param(f"{where}.{missing[0]}" if where else missing[0],
                            f"'{missing[0]}' is required" + (f" in '{where}'" if where else ""))


def parse_policy(body: Any) -> EnginePolicy:
    """The policy a ``POST /inferos/v1/policy`` body states; ApiError 400 naming the key."""
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_value")
    _exact_keys("", body, ("version", *SECTIONS))
    version = _integer(0, 2**63 - 1)("version", body["version"])
    values: dict[str, Any] = {}
    for section in SECTIONS:
        raw = body[section]
        if not isinstance(raw, dict):
            raise invalid_param(section, f"'{section}' must be an object")
        keys = tuple(k for k in POLICY_KEYS if k.section == section)
        _exact_keys(section, raw, tuple(k.leaf for k in keys))
        for key in keys:
            values[key.field] = key.parse(key.name, raw[key.leaf])
    return EnginePolicy(version=version, **values)


def parse_thresholds(text: str) -> LevelThresholds:
    """``L1,L2,L3`` as the ``--level-thresholds`` flag takes it; ConfigError if bad."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ConfigError("must be three numbers L1_int8,L2_int4,L3_evict",
                          key="level-thresholds")
    try:
        values = [float(p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"must be numbers: {exc}", key="level-thresholds") from exc
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("must be finite numbers", key="level-thresholds")
    return LevelThresholds(*values)


THRESHOLD_KEYS: Final = tuple(f"kv.level_thresholds.{name}" for name in THRESHOLD_NAMES)


def dotted(policy: EnginePolicy) -> dict[str, Any]:
    """``{dotted key: value}`` of every leaf, as acks and stats report them: the three
    thresholds each under its own key (``kv.level_thresholds.L1_int8``...)."""
    out: dict[str, Any] = {}
    for key in POLICY_KEYS:
        value = getattr(policy, key.field)
        if isinstance(value, LevelThresholds):
            out.update(zip(THRESHOLD_KEYS, (value.l1_int8, value.l2_int4, value.l3_evict),
                           strict=True))
        else:
            out[key.name] = value
    return out


DOTTED_KEYS: Final = tuple(dotted(EnginePolicy()))
"""Every key an ack lists, in applied or in not_applicable."""
