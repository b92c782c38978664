"""KV buffers the engine owns: one static buffer per layer for K and V, shared by the graph.

Each buffer is a numpy array of shape ``[1, kv_heads, max_len, head_dim]`` wrapped (not
copied) in an ``OrtValue``, bound through ``IOBinding`` as both the layer's past input and
its present output. GroupQueryAttention writes the new tokens' K/V in place at the
positions after the mask's length, so a decode step copies nothing, and rolling back is
shortening the attention mask (RUNTIME_FACTS.md: growing the cache instead copies it every
step and halves decode speed at 4k).

A buffer remembers which tokens it holds (``tokens``): the next generation that starts with
the same prefix skips prefilling it. The pool hands buffers out one generation at a time
and counts the ones out, which ``stats()`` reports so a test can see none leaks.

The pool is where all of the engine's host KV lives: buffers in use, free buffers, and,
with a ``PrefixCache`` (engine/prefix_cache.py), the parked KV of earlier generations:
``give_back`` parks a buffer's KV there, ``take`` restores a prompt's longest parked
prefix into the buffer it hands out, ``clear`` forgets both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from inferos.engine.prefix_cache import PrefixCache


@dataclass(frozen=True)
class KvShape:
    layers: int
    kv_heads: int
    head_dim: int
    max_len: int
    dtype: type = np.float32

    @property
    def bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * np.dtype(self.dtype).itemsize

    @property
    def bytes(self) -> int:
        return self.bytes_per_token * self.max_len


@dataclass
class KvBuffer:
    shape: KvShape
    keys: list[np.ndarray]
    values: list[np.ndarray]
    key_values: list[ort.OrtValue]
    value_values: list[ort.OrtValue]
    tokens: list[int] = field(default_factory=list)  # what positions [0, len) hold
    # After an eviction inside the context (engine/context_eviction.py), positions from
    # exact_len on hold moved, re-rotated KV: not what a prefill of their tokens gives.
    exact_len: int | None = None
    # The IOBinding that binds these buffers as the graph's past and present, built once:
    # rebinding 120 KV tensors every decode step cost ~0.4 ms of a ~25 ms step.
    binding: Any = None
    checked_runs: int = 0

    @property
    def exact_tokens(self) -> list[int]:
        """The leading tokens whose KV is exactly a prefill's: the reusable prefix."""
        return self.tokens if self.exact_len is None else self.tokens[:self.exact_len]

    @classmethod
    def allocate(cls, shape: KvShape) -> KvBuffer:
        dims = (1, shape.kv_heads, shape.max_len, shape.head_dim)
        keys: list[np.ndarray] = [np.zeros(dims, dtype=shape.dtype) for _ in range(shape.layers)]
        values: list[np.ndarray] = [np.zeros(dims, dtype=shape.dtype)
                                    for _ in range(shape.layers)]
        return cls(shape, keys, values,
                   [ort.OrtValue.ortvalue_from_numpy(a) for a in keys],
                   [ort.OrtValue.ortvalue_from_numpy(a) for a in values])

    def common_prefix(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` this buffer already holds, exactly."""
        tokens = self.exact_tokens
        limit = min(len(tokens), len(prompt))
        n = 0
        while n < limit and tokens[n] == prompt[n]:
            n += 1
        return n

    def keep_prefix(self, n: int) -> None:
        """Forget all but the first ``n`` tokens (at most the exact ones): the next run
        writes over the rest."""
        assert n <= len(self.exact_tokens), (n, len(self.exact_tokens))
        self.tokens = self.tokens[:n]
        self.exact_len = None


class KvPool:
    """Free buffers of one shape, reused; ``take`` allocates when none is free."""

    def __init__(self, shape: KvShape, keep: int = 1, cache: PrefixCache | None = None
                 ) -> None:
        self.shape = shape
        self.keep = keep
        self.cache = cache
        self._free: list[KvBuffer] = []
        self._lock = threading.Lock()
        self.in_use = 0
        self.allocated = 0

    def take(self, prompt: list[int], limit: int | None = None) -> KvBuffer:
        """The free buffer sharing the longest prefix with ``prompt`` (a new one if none),
        then filled from the prefix cache with as much of ``prompt``'s first ``limit``
        tokens as it has parked: ``common_prefix(prompt)`` says how much it holds."""
        with self._lock:
            if self._free:
                best = max(self._free, key=lambda b: b.common_prefix(prompt))
                self._free.remove(best)
            else:
                best = KvBuffer.allocate(self.shape)
                self.allocated += 1
            self.in_use += 1
        if self.cache is not None:
            limit = len(prompt) if limit is None else limit
            try:
                self.cache.restore(best, prompt, min(best.common_prefix(prompt), limit), limit)
            except BaseException:
                self.give_back(best, park=False)
                raise
        return best

    def give_back(self, buffer: KvBuffer, *, park: bool = True) -> None:
        """Takes ``buffer`` back; with ``park``, its KV (positions ``[0, len(tokens))``)
        goes to the prefix cache first."""
        try:
            if park and self.cache is not None:
                self.cache.save(buffer)
        finally:
            with self._lock:
                self.in_use -= 1
                if len(self._free) < self.keep:
                    self._free.append(buffer)
                else:
                    self.allocated -= 1

    def clear(self) -> None:
        """Frees the free buffers and forgets the parked KV."""
        with self._lock:
            self.allocated -= len(self._free)
            self._free.clear()
        if self.cache is not None:
            self.cache.clear()

    def cached_tokens(self) -> int:
        """Tokens held by the free buffers, kept for prefix reuse."""
        with self._lock:
            return sum(len(b.exact_tokens) for b in self._free)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"in_use": self.in_use, "allocated": self.allocated,
                    "bytes_per_buffer": self.shape.bytes,
                    "bytes": self.allocated * self.shape.bytes}
