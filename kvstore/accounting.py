"""Byte accounting: what a KV set costs at each level, metadata included.

Two kinds of figure live here:

- ``LevelStats``, a snapshot of a store (chunks and bytes per level, bytes spilled to
  disk, prefix hits and misses), in the shape ``/v1/metrics`` reports as ``kv_levels``;
- ``kv_bytes``/``memory_report``, the analytical size of a whole model's KV for a number
  of tokens at FP16, INT8, INT4 and a mix, computed from the layout quantize.py uses (one
  float16 scale and one float16 zero-point per group, keys grouped along tokens, values
  along channels, partial groups padded) so the figures match ``QuantizedTensor.nbytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from inferos.kvstore.levels import LEVEL_FORMATS, Level
from inferos.kvstore.quantize import DEFAULT_GROUP_SIZE

__all__ = [
    "SMOLLM2_135M",
    "LevelStats",
    "MemoryRow",
    "ModelKvShape",
    "kv_bytes",
    "memory_report",
]

_META_ITEMSIZE: Final = 2  # float16 scale and zero-point (quantize.py's normal case)


@dataclass(frozen=True)
class ModelKvShape:
    """The KV geometry of a model: per token, ``n_layers`` x 2 (K, V) x heads x dims."""

    n_layers: int
    n_kv_heads: int
    head_dim: int


SMOLLM2_135M: Final = ModelKvShape(n_layers=30, n_kv_heads=3, head_dim=64)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_bytes(
    model: ModelKvShape,
    n_tokens: int,
    level: Level,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    exact_itemsize: int = 2,
) -> int:
    """Bytes of ``n_tokens`` of the model's KV at ``level`` (L0 at ``exact_itemsize``)."""
    if n_tokens <= 0 or level is Level.L3:
        return 0
    h, d = model.n_kv_heads, model.head_dim
    if level is Level.L0:
        per_layer = 2 * h * n_tokens * d * exact_itemsize
    else:
        fmt = LEVEL_FORMATS[level]
        group_bytes = group_size * fmt.bits // 8 + 2 * _META_ITEMSIZE
        key_groups = h * d * _ceil_div(n_tokens, group_size)  # per channel, along tokens
        value_groups = h * n_tokens * _ceil_div(d, group_size)  # per token, along channels
        per_layer = (key_groups + value_groups) * group_bytes
    return model.n_layers * per_layer


@dataclass(frozen=True)
class MemoryRow:
    setting: str
    nbytes: int
    ratio_vs_fp16: float


def memory_report(
    model: ModelKvShape = SMOLLM2_135M,
    n_tokens: int = 2048,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    mixed: Mapping[Level, int] | None = None,
) -> list[MemoryRow]:
    """FP16, INT8, INT4 and a mix (tokens per level) of ``n_tokens`` of KV, vs FP16.

    The default mix is KIVI's: the 4 sink and 64 recent tokens exact (FP16), the rest INT4.
    """
    fp16 = kv_bytes(model, n_tokens, Level.L0, exact_itemsize=2)
    if mixed is None:
        exact = min(n_tokens, 4 + 64)
        mixed = {Level.L0: exact, Level.L2: n_tokens - exact}
    rows = [
        ("fp16", fp16),
        ("fp32 (engine buffers)", kv_bytes(model, n_tokens, Level.L0, exact_itemsize=4)),
        ("int8", kv_bytes(model, n_tokens, Level.L1, group_size=group_size)),
        ("int4", kv_bytes(model, n_tokens, Level.L2, group_size=group_size)),
        ("mixed " + ", ".join(f"{lvl.name}:{n}" for lvl, n in sorted(mixed.items())),
         sum(kv_bytes(model, n, lvl, group_size=group_size) for lvl, n in mixed.items())),
    ]
    return [MemoryRow(name, b, b / fp16) for name, b in rows]


@dataclass(frozen=True)
class LevelStats:
    """A store's state at one moment: per level, chunk counts and bytes in memory."""

    chunks: Mapping[Level, int]
    nbytes: Mapping[Level, int]
    spilled_bytes: int
    exact_nbytes: int
    hits: int
    misses: int
    tokens: Mapping[Level, int] = field(default_factory=dict)  # token count at each level

    @property
    def total_nbytes(self) -> int:
        return sum(self.nbytes.values())

    def as_metrics(self) -> dict[str, object]:
        """The ``kv_levels`` object of ``/v1/metrics``: ``{L0..L3: {chunks, bytes}}`` + totals."""
        levels: dict[str, object] = {
            lvl.name: {"chunks": self.chunks.get(lvl, 0), "bytes": self.nbytes.get(lvl, 0)}
            for lvl in Level
        }
        levels.update(
            spilled_bytes=self.spilled_bytes,
            bytes=self.total_nbytes,
            exact_bytes=self.exact_nbytes,
            prefix_hits=self.hits,
            prefix_misses=self.misses,
        )
        return levels
