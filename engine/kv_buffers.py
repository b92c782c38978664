"""KV buffers the engine owns: one batch buffer per layer for K and V, shared by the graph.

Each layer's K and V live in one numpy array of shape ``[rows, kv_heads, max_len, head_dim]``
(``BatchKv``). A row is one sequence's KV, written from position 0 (right padding). A
``KvBuffer`` is a row: views of its slice of every layer, bound through ``IOBinding`` by
address as both the layer's past input and its present output when that row runs alone
(prefill, speculative verification), and the first ``n`` rows together are bound for a
batched decode step (``BatchKv.binding``). GroupQueryAttention writes the new tokens' K/V
in place at the positions after each row's mask sum, so a step copies nothing, and rolling
back is shortening the attention mask (RUNTIME_FACTS.md: growing the cache instead copies
it every step and halves decode speed at 4k). The arrays are ``np.zeros``: pages are
touched, and so resident, only as far as rows are used.

A row remembers which tokens it holds (``tokens``): the next generation that starts with
the same prefix skips prefilling it. The pool hands rows out, lowest free row first unless
another free row already holds a long part of the prompt (a batched step runs rows
``[0, n)``: holes cost a row of compute), and counts the ones out, which ``stats()``
reports so a test can see none leaks.

The pool is where all of the engine's host KV lives: rows in use, free rows, and, with a
``PrefixCache`` (engine/prefix_cache.py), the parked KV of earlier generations:
``give_back`` parks a row's KV there, ``take`` restores a prompt's longest parked prefix
into the row it hands out, ``clear`` forgets both.

Memory (issue 11): the batch buffer is ``capacity`` rows of ``shape.bytes`` each, allocated
but resident only as touched; ``stats()`` reports it allocated (``allocated_bytes``),
as touched rows (``bytes``) and as the kernel holds it (``resident_bytes``, mincore(2),
None where that cannot be read). ``rss_at_start`` is the process RSS when the pool was
made: the weights and runtime, before any KV (engine/memory_budget.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from inferos.engine.memory_budget import process_rss_bytes, resident_bytes

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


@dataclass(eq=False)  # rows are compared by identity
class KvBuffer:
    shape: KvShape
    keys: list[np.ndarray]    # [1, kv_heads, max_len, head_dim] views of the batch buffer
    values: list[np.ndarray]
    row: int = 0
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


class BatchKv:
    """The KV of ``capacity`` rows, per layer one K and one V array holding every row."""

    def __init__(self, shape: KvShape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        dims = (capacity, shape.kv_heads, shape.max_len, shape.head_dim)
        self.keys: list[np.ndarray] = [np.zeros(dims, dtype=shape.dtype)
                                       for _ in range(shape.layers)]
        self.values: list[np.ndarray] = [np.zeros(dims, dtype=shape.dtype)
                                         for _ in range(shape.layers)]
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}

    def row(self, index: int) -> KvBuffer:
        return KvBuffer(self.shape, [k[index:index + 1] for k in self.keys],
                        [v[index:index + 1] for v in self.values], row=index)

    def binding(self, session: ort.InferenceSession, rows: int,
                names: list[tuple[str, str, str, str]]) -> ort.IOBinding:
        """The binding of rows ``[0, rows)`` as past and present of every layer (``names``:
        past key, past value, present key, present value), built once per width."""
        key = (id(session), rows)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = bind_rows(
                session, names, self.keys, self.values, rows, self.shape)
        return binding


def bind_rows(session: ort.InferenceSession, names: list[tuple[str, str, str, str]],
              keys: list[np.ndarray], values: list[np.ndarray], rows: int,
              shape: KvShape) -> ort.IOBinding:
    """An IOBinding whose past and present are the first ``rows`` rows of ``keys`` and
    ``values`` (each C-contiguous from its first row), by address: written in place."""
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")  # first: get_outputs() keeps binding order
    dims = [rows, shape.kv_heads, shape.max_len, shape.head_dim]
    for (past_k, past_v, present_k, present_v), key, value in zip(names, keys, values,
                                                                  strict=True):
        for past, present, array in ((past_k, present_k, key), (past_v, present_v, value)):
            address = array.ctypes.data
            binding.bind_input(past, "cpu", 0, np.float32, dims, address)
            binding.bind_output(present, "cpu", 0, np.float32, dims, address)
    return binding


REUSE_MIN_TOKENS = 32  # below this, a free row's prefix is not worth a hole in the batch


class KvPool:
    """The rows of one batch buffer; ``take`` hands out a free one."""

    def __init__(self, shape: KvShape, capacity: int = 1, cache: PrefixCache | None = None
                 ) -> None:
        self.shape = shape
        self.cache = cache
        self.batch = BatchKv(shape, capacity)
        self._free: list[KvBuffer] = [self.batch.row(i) for i in range(capacity)]
        self._lock = threading.Lock()
        self.in_use = 0
        self.touched: set[int] = set()  # rows ever handed out: their pages are resident
        # Before any row is written: the model's session, weights and runtime only.
        self.rss_at_start = process_rss_bytes()

    @property
    def capacity(self) -> int:
        return self.batch.capacity

    def free_rows(self) -> int:
        with self._lock:
            return len(self._free)

    def free_buffers(self) -> list[KvBuffer]:
        """The free rows (generation thread: a batched step pads with them)."""
        with self._lock:
            return list(self._free)

    def take(self, prompt: list[int], limit: int | None = None) -> KvBuffer:
        """A free row: the one holding the longest prefix of ``prompt`` when that is at
        least ``REUSE_MIN_TOKENS`` (or all of a shorter prompt), else the lowest; then
        filled from the prefix cache with as much of ``prompt``'s first ``limit`` tokens
        as it has parked: ``common_prefix(prompt)`` says how much it holds. RuntimeError
        when no row is free (the scheduler admits no more than there are rows)."""
        with self._lock:
            if not self._free:
                raise RuntimeError("no free KV row")
            best = max(self._free, key=lambda b: (b.common_prefix(prompt), -b.row))
            held = best.common_prefix(prompt)
            if held < min(REUSE_MIN_TOKENS, len(prompt) - 1):
                best = min(self._free, key=lambda b: b.row)
            self._free.remove(best)
            self.in_use += 1
            self.touched.add(best.row)
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
                self._free.append(buffer)

    def clear(self) -> None:
        """Forgets what the free rows hold and the parked KV."""
        with self._lock:
            for buffer in self._free:
                buffer.keep_prefix(0)
                buffer.checked_runs = 0  # as a new buffer's, its next run is checked
        if self.cache is not None:
            self.cache.clear()

    def cached_tokens(self) -> int:
        """Tokens held by the free rows, kept for prefix reuse."""
        with self._lock:
            return sum(len(b.exact_tokens) for b in self._free)

    def arrays(self) -> list[np.ndarray]:
        """Every K and V array of the batch buffer (what its memory is)."""
        return [*self.batch.keys, *self.batch.values]

    def stats(self) -> dict[str, int | None]:
        with self._lock:
            touched = len(self.touched)
            in_use = self.in_use
        return {"in_use": in_use, "rows": self.capacity, "allocated": touched,
                "bytes_per_buffer": self.shape.bytes,
                "bytes": touched * self.shape.bytes,
                "allocated_bytes": self.capacity * self.shape.bytes,
                "resident_bytes": resident_bytes(self.arrays())}
