"""``KvChunk``: the keys and values of one layer, a head range and a token range.

A chunk holds K and V shaped [H, T, D] and moves between levels (see levels.py) with
``move_to``. Every move is reversible in the sense the engine needs:

- L0 keeps the arrays exactly as given (``exact``), or in float16 after ``to_half``: the
  precision llama.cpp's and most engines' KV caches hold as their full precision, within
  ``max_abs_error``. ``parked`` (what ``KvStore.put`` makes) holds float32 KV in float16
  from the start: half the bytes of the engine's float32 for a logit change the engine
  measured below 0.004 (engine/prefix_cache.py);
- L1/L2 keep ``QuantizedTensor`` pairs that restore shape and dtype, each element within
  the bound of the quantizations it went through (``max_abs_error`` adds them up: a chunk
  taken L0 -> L1 -> L2 was quantized twice);
- quantization loses what it rounds away, for good: ``loss_level`` is the lossiest level
  the data has been quantized to, and stays when the chunk moves back up (an L1 chunk
  moved to L0 holds its dequantized values: float32 bytes, INT8 quality);
- L3 with a spill directory writes the current payload (exact or codes) compressed to
  disk and reads back exactly that; L3 without one drops it, and reading raises
  ``ChunkDroppedError``.

Keys are grouped per channel and values per token (KIVI), see quantize.py for why.
The observed importance terms (attention proxy, reuse count, similarity, last access)
live on the chunk because they are facts about it; the score is computed from them by
the store with the current weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inferos.errors import InferOSError
from inferos.kvstore.levels import LEVEL_FORMATS, Level
from inferos.kvstore.quantize import (
    DEFAULT_GROUP_SIZE,
    KEY_GROUP_AXIS,
    VALUE_GROUP_AXIS,
    QuantizedTensor,
    dequantize,
    error_bound,
    quantize,
    quantized_nbytes,
)
from inferos.kvstore.spill import Payload, PayloadPart, read_payload, write_payload

__all__ = ["ChunkDroppedError", "ChunkId", "KvChunk"]


class ChunkDroppedError(InferOSError, LookupError):
    """The chunk was evicted without a spill file: its KV must be recomputed."""


@dataclass(frozen=True)
class ChunkId:
    """Where a chunk sits: ``prefix`` (its prefix-block key), layer, heads and tokens.

    Ranges are half-open ``(start, stop)``.
    """

    layer: int
    heads: tuple[int, int]
    tokens: tuple[int, int]
    prefix: bytes = b""

    def file_stem(self) -> str:
        return (f"{self.prefix.hex() or 'none'}-l{self.layer}-h{self.heads[0]}_{self.heads[1]}"
                f"-t{self.tokens[0]}_{self.tokens[1]}")


@dataclass(eq=False)
class KvChunk:
    """One chunk of KV and its metadata. Create with ``KvChunk.exact``."""

    id: ChunkId
    shape: tuple[int, int, int]
    dtype: np.dtype
    level: Level
    keys: PayloadPart | None
    values: PayloadPart | None
    group_size: int = DEFAULT_GROUP_SIZE
    max_abs_error: float = 0.0
    loss_level: Level = Level.L0
    last_access_ns: int = field(default_factory=time.monotonic_ns)
    importance: float = 0.0
    pinned: bool = False
    reuse_count: int = 0
    attn: float = 0.5
    sem: float = 0.5
    spill_path: Path | None = None
    spilled_from: Level | None = None
    spill_bytes: int = 0

    @classmethod
    def exact(
        cls,
        chunk_id: ChunkId,
        keys: np.ndarray,
        values: np.ndarray,
        *,
        group_size: int = DEFAULT_GROUP_SIZE,
        now_ns: int | None = None,
        pinned: bool = False,
    ) -> KvChunk:
        """An L0 chunk holding ``keys`` and ``values`` [H, T, D] as given (not copied)."""
        if keys.shape != values.shape or keys.dtype != values.dtype or keys.ndim != 3:
            raise ValueError(f"keys {keys.shape} {keys.dtype} and values {values.shape} "
                             f"{values.dtype} must be [H, T, D] of one dtype")
        (h0, h1), (t0, t1) = chunk_id.heads, chunk_id.tokens
        if (h1 - h0, t1 - t0) != keys.shape[:2]:
            raise ValueError(f"{chunk_id} does not match shape {keys.shape}")
        return cls(
            id=chunk_id,
            shape=(int(keys.shape[0]), int(keys.shape[1]), int(keys.shape[2])),
            dtype=keys.dtype,
            level=Level.L0,
            keys=keys,
            values=values,
            group_size=group_size,
            last_access_ns=time.monotonic_ns() if now_ns is None else now_ns,
            pinned=pinned,
        )

    @classmethod
    def parked(
        cls,
        chunk_id: ChunkId,
        keys: np.ndarray,
        values: np.ndarray,
        *,
        group_size: int = DEFAULT_GROUP_SIZE,
        now_ns: int | None = None,
    ) -> KvChunk:
        """An L0 chunk of copies of ``keys`` and ``values``, float32 held in float16.

        Float16 is the store's parking format: the engine's buffers are float32 only
        because its graph computes in float32, and parking them as they are took twice
        the memory of any other engine's exact KV (issue 11). A chunk with a value beyond
        float16's range, or of another dtype, keeps copies in its own dtype.
        """
        chunk = cls.exact(chunk_id, keys, values, group_size=group_size, now_ns=now_ns)
        if not chunk.to_half():  # to_half made new arrays; otherwise copy the views
            chunk.keys, chunk.values = np.array(keys, copy=True), np.array(values, copy=True)
        return chunk

    @property
    def nbytes(self) -> int:
        """Bytes held in memory, quantization metadata included; 0 at L3."""
        return sum(part.nbytes for part in (self.keys, self.values) if part is not None)

    @property
    def exact_nbytes(self) -> int:
        """Bytes of the same K and V held exactly in their own dtype."""
        return 2 * math.prod(self.shape) * self.dtype.itemsize

    def nbytes_at(self, level: Level) -> int:
        """Bytes this chunk would hold at ``level`` (an estimate at L1/L2: float16
        metadata, which quantize.py uses unless values are huge)."""
        if level is Level.L3:
            return 0
        if level is Level.L0:
            return self.exact_nbytes
        fmt = LEVEL_FORMATS[level]
        return (quantized_nbytes(self.shape, fmt, self.group_size, KEY_GROUP_AXIS)
                + quantized_nbytes(self.shape, fmt, self.group_size, VALUE_GROUP_AXIS))

    @property
    def quant(self) -> tuple[QuantizedTensor, QuantizedTensor] | None:
        """The (keys, values) quantization metadata and codes at L1/L2, else None."""
        if isinstance(self.keys, QuantizedTensor) and isinstance(self.values, QuantizedTensor):
            return self.keys, self.values
        return None

    def touch(self, now_ns: int | None = None) -> None:
        """Record a reuse: bumps ``reuse_count`` and ``last_access_ns``."""
        self.reuse_count += 1
        self.last_access_ns = time.monotonic_ns() if now_ns is None else now_ns

    def _payload(self) -> Payload:
        if self.level is Level.L3:
            if self.spill_path is None:
                raise ChunkDroppedError(f"chunk {self.id} was evicted and not spilled")
            return read_payload(self.spill_path)
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def restore(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) as float arrays of the original shape and dtype; level unchanged.

        Exact at L0 (the stored arrays themselves, not copies) unless halved, within
        ``max_abs_error`` at L1/L2 and halved L0, and for a spilled L3 chunk whatever its
        level was when spilled.
        """
        keys, values = self._payload()
        out = tuple(p.astype(self.dtype, copy=False) if isinstance(p, np.ndarray)
                    else dequantize(p) for p in (keys, values))
        assert all(a.shape == self.shape and a.dtype == self.dtype for a in out)
        return out[0], out[1]

    @property
    def halved(self) -> bool:
        """True when an L0 chunk holds its float32 KV in float16 (see ``to_half``)."""
        return isinstance(self.keys, np.ndarray) and self.keys.dtype != self.dtype

    def to_half(self) -> bool:
        """Hold an L0 float32 chunk in float16: half the bytes, error <= 2^-11 relative.

        Returns False (and changes nothing) when there is nothing to halve: another
        level, already float16, or a value beyond float16's range.
        """
        if self.level is not Level.L0 or self.dtype != np.float32 or self.halved:
            return False
        assert isinstance(self.keys, np.ndarray) and isinstance(self.values, np.ndarray)
        limit = float(np.finfo(np.float16).max)
        if any(float(np.abs(a).max()) > limit for a in (self.keys, self.values)):
            return False
        halves = [a.astype(np.float16) for a in (self.keys, self.values)]
        self.max_abs_error += max(float(np.abs(h.astype(np.float32) - a).max())
                                  for h, a in zip(halves, (self.keys, self.values),
                                                  strict=True))
        self.keys, self.values = halves
        return True

    def move_to(self, target: Level, spill_dir: Path | None = None) -> None:
        """Take the chunk to ``target``: quantize, dequantize, spill, drop or load back.

        Going to L3 spills to ``spill_dir`` when given, else drops. Leaving L3 loads the
        spill file (raising ``ChunkDroppedError`` if there is none) and continues from
        the level it was spilled from.
        """
        if target is self.level:
            return
        if self.level is Level.L3:
            self.keys, self.values = self._payload()
            assert self.spilled_from is not None
            self.level = self.spilled_from
            self._delete_spill()
            if target is self.level:
                return
        if target is Level.L3:
            self._evict(spill_dir)
            return
        keys, values = self.restore()
        if target is Level.L0:
            self.keys, self.values = keys, values
        else:
            fmt = LEVEL_FORMATS[target]
            qk = quantize(keys, fmt, self.group_size, KEY_GROUP_AXIS)
            qv = quantize(values, fmt, self.group_size, VALUE_GROUP_AXIS)
            self.max_abs_error += max(float(error_bound(qk).max()), float(error_bound(qv).max()))
            self.loss_level = max(self.loss_level, target)
            self.keys, self.values = qk, qv
        self.level = target

    def _evict(self, spill_dir: Path | None) -> None:
        if spill_dir is not None:
            path = spill_dir / f"{self.id.file_stem()}.npz"
            self.spill_bytes = write_payload(path, self._payload())
            self.spill_path = path
            self.spilled_from = self.level
        else:
            self.spilled_from = None
        self.keys = self.values = None
        self.level = Level.L3

    def _delete_spill(self) -> None:
        if self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)
        self.spill_path = None
        self.spilled_from = None
        self.spill_bytes = 0

    def discard(self) -> None:
        """Free the payload and any spill file; the chunk is dropped for good."""
        self._delete_spill()
        self.keys = self.values = None
        self.level = Level.L3
