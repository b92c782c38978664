"""Storage levels of a KV chunk and the policy that picks one (the seed's ``decide_level``).

    L0  exact: the engine's float32 KV held in float16 (2^-11 relative; KvChunk.parked)
    L1  INT8 codes, per-group scale and zero-point        (KIVI grouping, see quantize.py)
    L2  INT4 codes, two per byte, per-group scale and zero-point
    L3  evicted: dropped, or spilled to disk compressed and restorable

``decide_level`` maps an importance score to a level by three thresholds, from the
``infer_os.kv.level_thresholds`` config: I >= L1_int8 -> L0, >= L2_int4 -> L1,
>= L3_evict -> L2, else L3. Three things override the score, in this order:

1. pinned chunks, the first ``sink_tokens`` of the context (attention sinks: StreamingLLM
   showed that evicting them collapses quality, IntactKV and KVQuant keep them exact) and
   the last ``recent_window`` tokens (KIVI's full-precision residual; the next query
   attends to them most) stay L0;
2. a degraded quality signal (estimated delta-PPL above ``max_delta_ppl``) promotes back
   to L0: quality is the budget the policy spends, and once overspent it stops spending;
3. nothing else.

What "back to L0" can mean is the store's business: ``KvStore.apply_policy`` never moves a
chunk above the level its data was quantized to (that would cost memory and restore
nothing), so a degraded signal keeps exact chunks exact and quantized ones where they are.

Memory pressure (``host_pool_bytes``) is not decided here: ``KvStore.enforce_budget``
demotes past this policy when the pool would overflow, since a hard memory limit cannot
yield to a quality preference. It still never touches protected chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from inferos.errors import ConfigError
from inferos.kvstore.quantize import INT4, INT8, QuantFormat

if TYPE_CHECKING:
    from inferos.kvstore.chunk import KvChunk

__all__ = [
    "LEVEL_FORMATS",
    "Level",
    "LevelThresholds",
    "QualitySignal",
    "decide_level",
    "is_protected",
]


class Level(IntEnum):
    """A chunk's storage level; a larger number is cheaper and lossier."""

    L0 = 0
    L1 = 1
    L2 = 2
    L3 = 3


LEVEL_FORMATS: Final[Mapping[Level, QuantFormat]] = {Level.L1: INT8, Level.L2: INT4}
"""The one table of which code format each quantized level uses."""

DEFAULT_RECENT_WINDOW: Final = 64
DEFAULT_SINK_TOKENS: Final = 4


@dataclass(frozen=True)
class LevelThresholds:
    """Importance cut-offs, each the lowest score that still earns the level above it."""

    l1_int8: float = 0.7
    l2_int4: float = 0.5
    l3_evict: float = 0.3

    def __post_init__(self) -> None:
        if not self.l1_int8 >= self.l2_int4 >= self.l3_evict:
            raise ConfigError(
                f"must satisfy L1_int8 >= L2_int4 >= L3_evict, got "
                f"{self.l1_int8}, {self.l2_int4}, {self.l3_evict}",
                key="infer_os.kv.level_thresholds",
            )

    @classmethod
    def from_config(cls, raw: Mapping[str, float]) -> LevelThresholds:
        """From the config's ``{L1_int8, L2_int4, L3_evict}`` mapping; missing keys default."""
        known = {"L1_int8": "l1_int8", "L2_int4": "l2_int4", "L3_evict": "l3_evict"}
        unknown = set(raw) - set(known)
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}",
                              key="infer_os.kv.level_thresholds")
        try:
            values = {known[k]: float(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"thresholds must be numbers: {exc}",
                              key="infer_os.kv.level_thresholds") from exc
        return cls(**values)


@dataclass(frozen=True)
class QualitySignal:
    """A quality estimate (of the KV held now), and the budget it must stay within."""

    delta_ppl_est: float | None
    max_delta_ppl: float = 0.5

    @property
    def degraded(self) -> bool:
        return self.delta_ppl_est is not None and self.delta_ppl_est > self.max_delta_ppl


def is_protected(
    token_range: tuple[int, int],
    context_len: int,
    *,
    recent_window: int = DEFAULT_RECENT_WINDOW,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
) -> bool:
    """True when ``[start, stop)`` overlaps the sink tokens or the recent window."""
    start, stop = token_range
    return start < sink_tokens or stop > context_len - recent_window


def decide_level(
    chunk: KvChunk,
    importance: float,
    thresholds: LevelThresholds = LevelThresholds(),
    *,
    context_len: int,
    recent_window: int = DEFAULT_RECENT_WINDOW,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
    quality: QualitySignal | None = None,
) -> Level:
    """The level ``chunk`` should be at, as the last ``context_len`` tokens stand now."""
    if chunk.pinned or is_protected(chunk.id.tokens, context_len,
                              recent_window=recent_window, sink_tokens=sink_tokens):
        return Level.L0
    if quality is not None and quality.degraded:
        return Level.L0
    if importance >= thresholds.l1_int8:
        return Level.L0
    if importance >= thresholds.l2_int4:
        return Level.L1
    if importance >= thresholds.l3_evict:
        return Level.L2
    return Level.L3
