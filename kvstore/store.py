"""``KvStore``: KV of finished requests kept by token-prefix block, across levels.

What the engine does with it:

- after a request, ``put(token_ids, keys, values)`` with its KV buffers ([H, >=T, D] per
  layer): every full block of ``block_tokens`` tokens not yet stored is copied in at L0,
  one ``KvChunk`` per layer, float32 held in float16 (``KvChunk.parked``: half the bytes,
  2^-11 relative error; ``restore`` gives float32 back); the attention and similarity
  proxies of every block of the sequence are observed from the exact keys (importance.py);
- before a prefill, ``match(token_ids)`` says how many leading tokens are stored, and
  ``load_into(token_ids, key_bufs, value_bufs)`` dequantizes them straight into the
  engine's buffers (the chunks stay at their level: the store stays small);
- under memory pressure, ``enforce_budget`` demotes chunks until the store holds at most
  ``host_pool_bytes``; ``apply_policy`` moves every chunk to what ``decide_level`` says,
  within a quality budget when it is given one, then enforces the byte budget. Both
  delegate to kvstore/leveling.py, which holds the rounds, the quality-budget planning
  and the rules on loss levels, protection and eviction.

This module holds the blocks and what reads or writes them one by one (put, match,
load, get, single-chunk moves, drop, rescore, accounting); it decides no level itself.

Not thread-safe: the engine calls it from its one generation thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inferos.errors import ConfigError
from inferos.kvstore import leveling
from inferos.kvstore.accounting import LevelStats
from inferos.kvstore.chunk import ChunkId, KvChunk
from inferos.kvstore.importance import (
    ImportanceTerms,
    ImportanceWeights,
    age_term,
    attention_proxy,
    frequency_term,
    semantic_proxies,
)
from inferos.kvstore.leveling import PolicyRound, QualityCost
from inferos.kvstore.levels import (
    DEFAULT_RECENT_WINDOW,
    DEFAULT_SINK_TOKENS,
    Level,
    LevelThresholds,
    QualitySignal,
    is_protected,
)
from inferos.kvstore.prefix_index import DEFAULT_BLOCK_TOKENS, PrefixIndex
from inferos.kvstore.quantize import DEFAULT_GROUP_SIZE

__all__ = ["KvStore", "KvStoreConfig", "PolicyRound", "QualityCost", "StoredBlock"]


@dataclass(frozen=True)
class KvStoreConfig:
    """Everything the store's policy reads; swap the whole object to change it."""

    host_pool_bytes: int = 4096 * 2**20
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    group_size: int = DEFAULT_GROUP_SIZE
    recent_window: int = DEFAULT_RECENT_WINDOW
    sink_tokens: int = DEFAULT_SINK_TOKENS
    thresholds: LevelThresholds = LevelThresholds()
    weights: ImportanceWeights = ImportanceWeights()
    n_probes: int = 8
    spill_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("host_pool_bytes", "block_tokens", "group_size", "n_probes"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", key=f"infer_os.kv.{name}")
        for name in ("recent_window", "sink_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError("must not be negative", key=f"infer_os.kv.{name}")


@dataclass(eq=False)
class StoredBlock:
    """One prefix block: its chunks (one per layer) and its place in the chain."""

    key: bytes
    parent: bytes | None
    tokens: tuple[int, int]
    chunks: list[KvChunk]
    context_len: int
    children: set[bytes] = field(default_factory=set)

    @property
    def level(self) -> Level:
        """The block's worst (highest) level: what a reader has to cope with."""
        return max(c.level for c in self.chunks)


class KvStore:
    """Prefix-keyed KV store with levels, a byte budget and hit/miss accounting."""

    def __init__(self, config: KvStoreConfig = KvStoreConfig(),
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.config = config
        self._clock = clock
        self._index: PrefixIndex[StoredBlock] = PrefixIndex(config.block_tokens)
        self.dropped_blocks = 0  # evicted without a spill file, since the store was made
        self.dropped_tokens = 0

    # -- contents ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stored blocks."""
        return len(self._index)

    def blocks(self) -> Iterator[StoredBlock]:
        for key in list(self._index):
            block = self._index.get(key)
            if block is not None:
                yield block

    def chunks(self) -> Iterator[KvChunk]:
        for block in self.blocks():
            yield from block.chunks

    def chunk(self, chunk_id: ChunkId) -> KvChunk:
        block = self._index.get(chunk_id.prefix)
        if block is None:
            raise KeyError(chunk_id)
        return block.chunks[chunk_id.layer]

    def is_protected(self, block: StoredBlock) -> bool:
        return any(c.pinned for c in block.chunks) or is_protected(
            block.tokens, block.context_len,
            recent_window=self.config.recent_window, sink_tokens=self.config.sink_tokens)

    # -- put / match / load -----------------------------------------------------------

    def put(
        self,
        token_ids: Sequence[int] | np.ndarray,
        keys: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        probes: Sequence[np.ndarray] | None = None,
        *,
        enforce: bool = True,
    ) -> int:
        """Store the full blocks of ``token_ids``; return how many blocks were new.

        ``keys[l]``/``values[l]`` are [H, >=T, D] for T = len(token_ids) (an engine
        buffer may be longer); block slices are copied. ``probes[l]`` [H, P, D] stand in
        for queries in the attention proxy; by default the last ``n_probes`` keys.
        ``enforce`` False skips the byte budget, for a caller that runs ``apply_policy``
        next (which enforces it after the policy's own moves).
        """
        n = len(token_ids)
        if len(keys) != len(values) or not keys:
            raise ValueError("keys and values need one array per layer")
        for k, v in zip(keys, values, strict=True):
            if k.ndim != 3 or k.shape != v.shape or k.shape[1] < n:
                raise ValueError(f"KV arrays must be [H, >={n}, D], got {k.shape}, {v.shape}")
        now = self._clock()
        bt = self.config.block_tokens
        new = 0
        parent: bytes | None = None
        path: list[StoredBlock] = []
        for i, key in enumerate(self._index.keys_for(token_ids)):
            block = self._index.get(key)
            if block is None:
                start, stop = i * bt, (i + 1) * bt
                chunks = [
                    KvChunk.parked(
                        ChunkId(layer, (0, k.shape[0]), (start, stop), key),
                        k[:, start:stop], v[:, start:stop],  # parked copies them
                        group_size=self.config.group_size,
                        now_ns=now,
                    )
                    for layer, (k, v) in enumerate(zip(keys, values, strict=True))
                ]
                block = StoredBlock(key, parent, (start, stop), chunks, n)
                self._index.put(key, block)
                if parent is not None:
                    parent_block = self._index.get(parent)
                    assert parent_block is not None
                    parent_block.children.add(key)
                new += 1
            block.context_len = max(block.context_len, n)
            path.append(block)
            parent = key
        if path:
            self._observe(path, n, keys, probes)
        if enforce:
            self.enforce_budget()
        return new

    def _observe(self, path: list[StoredBlock], n: int, keys: Sequence[np.ndarray],
                 probes: Sequence[np.ndarray] | None) -> None:
        """Attention and similarity proxies of every block on ``path``, from exact keys."""
        ranges = [b.tokens for b in path]
        window = max(1, min(self.config.recent_window, n))
        for layer, k in enumerate(keys):
            context = k[:, :n]
            probe = probes[layer] if probes is not None else context[:, -self.config.n_probes:]
            attn = attention_proxy(probe, context, ranges)
            sem = semantic_proxies(context, ranges, context[:, n - window:])
            for block, a, s in zip(path, attn, sem, strict=True):
                chunk = block.chunks[layer]
                chunk.attn = float(a)
                chunk.sem = float(s)

    def match(self, token_ids: Sequence[int] | np.ndarray) -> int:
        """How many leading tokens of ``token_ids`` the store can supply (counts hits)."""
        return self._index.match(token_ids).n_tokens

    def load_into(
        self,
        token_ids: Sequence[int] | np.ndarray,
        key_out: Sequence[np.ndarray],
        value_out: Sequence[np.ndarray],
        max_tokens: int | None = None,
        start: int = 0,
    ) -> int:
        """Write the stored prefix of ``token_ids`` into [H, >=n, D] arrays; return n.

        Counts hits and misses, and a reuse on every chunk of the prefix. At most
        ``max_tokens`` tokens (whole blocks) are loaded: the engine keeps the last prompt
        token to run. Positions before ``start`` are left as they are (the engine's buffer
        already holds them, exactly): only what lies past it is restored, and dequantized.
        """
        found = self._index.match(token_ids)
        now = self._clock()
        loaded = 0
        for block in found.entries:
            first, stop = block.tokens
            if max_tokens is not None and stop > max_tokens:
                break
            skip = min(max(start - first, 0), stop - first)
            for chunk, k_out, v_out in zip(block.chunks, key_out, value_out, strict=True):
                if skip < stop - first:
                    k, v = chunk.restore()
                    k_out[:, first + skip:stop] = k[:, skip:]
                    v_out[:, first + skip:stop] = v[:, skip:]
                chunk.touch(now)
            loaded = stop
        return loaded

    def get(self, token_ids: Sequence[int] | np.ndarray
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The stored prefix of ``token_ids`` as fresh [H, n, D] arrays per layer."""
        found = self._index.match(token_ids, count=False)
        if not found.entries:
            self._index.match(token_ids)  # count the misses
            return [], []
        first = found.entries[0].chunks
        keys = [np.empty((c.shape[0], found.n_tokens, c.shape[2]), c.dtype) for c in first]
        values = [np.empty_like(k) for k in keys]
        self.load_into(token_ids, keys, values)
        return keys, values

    # -- levels -----------------------------------------------------------------------

    def move(self, chunk_id: ChunkId, level: Level) -> None:
        """Move one chunk to ``level`` (spilling to the configured directory at L3)."""
        self.chunk(chunk_id).move_to(level, self.config.spill_dir)
        if level is Level.L3 and self.config.spill_dir is None:
            self._drop(self._index.get(chunk_id.prefix))

    def demote(self, chunk_id: ChunkId, level: Level) -> None:
        chunk = self.chunk(chunk_id)
        if level < chunk.level:
            raise ValueError(f"demote goes down: {chunk.level.name} -> {level.name}")
        self.move(chunk_id, level)

    def promote(self, chunk_id: ChunkId, level: Level = Level.L0) -> None:
        chunk = self.chunk(chunk_id)
        if level > chunk.level:
            raise ValueError(f"promote goes up: {chunk.level.name} -> {level.name}")
        self.move(chunk_id, level)

    def restore(self, chunk_id: ChunkId) -> tuple[np.ndarray, np.ndarray]:
        """One chunk's (keys, values) as float arrays; its level does not change."""
        return self.chunk(chunk_id).restore()

    def _drop(self, block: StoredBlock | None) -> None:
        """Forget ``block`` and every block after it in its chains."""
        if block is None:
            return
        for child in list(block.children):
            self._drop(self._index.get(child))
        for chunk in block.chunks:
            chunk.discard()
        self._index.remove(block.key)
        self.dropped_blocks += 1
        self.dropped_tokens += block.tokens[1] - block.tokens[0]
        if block.parent is not None:
            parent = self._index.get(block.parent)
            if parent is not None:
                parent.children.discard(block.key)

    def rescore(self) -> None:
        """Recompute every chunk's importance from its observed terms and its age."""
        now = self._clock()
        w = self.config.weights
        for chunk in self.chunks():
            terms = ImportanceTerms(
                attn=chunk.attn,
                freq=frequency_term(chunk.reuse_count, w),
                sem=chunk.sem,
                age=age_term(now - chunk.last_access_ns, w),
            )
            chunk.importance = terms.score(w)

    def apply_policy(self, quality: QualitySignal | None = None,
                     cost: QualityCost | None = None) -> PolicyRound:
        """Move every chunk to ``decide_level``'s answer, never above its loss level, then
        enforce the byte budget. With ``quality`` and ``cost``, the plan is first kept
        within ``quality.max_delta_ppl`` (see kvstore/leveling.py)."""
        return leveling.apply_policy(self, quality, cost)

    def enforce_budget(self) -> int:
        """Demote chunks until the store fits ``host_pool_bytes``; return the moves
        (the rounds are in kvstore/leveling.py)."""
        return leveling.enforce_budget(self)

    # -- accounting -------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes held in memory, metadata included (``stats().total_nbytes``, cheaply)."""
        return sum(c.nbytes for c in self.chunks())

    def loss_tokens(self) -> dict[Level, int]:
        """Tokens held in memory per loss level, L0..L2 (what a quality estimate weighs;
        a token counts in proportion to its layers, as in ``stats``)."""
        token_layers = dict.fromkeys((Level.L0, Level.L1, Level.L2), 0)
        layers = 1
        for block in self.blocks():
            layers = max(layers, len(block.chunks))
            span = block.tokens[1] - block.tokens[0]
            for chunk in block.chunks:
                if chunk.level is not Level.L3:
                    token_layers[chunk.loss_level] += span
        return {lvl: round(n / layers) for lvl, n in token_layers.items()}

    def stats(self) -> LevelStats:
        counts = dict.fromkeys(Level, 0)
        nbytes = dict.fromkeys(Level, 0)
        token_layers = dict.fromkeys(Level, 0)
        spilled = exact = 0
        layers = 1
        for block in self.blocks():
            layers = max(layers, len(block.chunks))
            span = block.tokens[1] - block.tokens[0]
            for chunk in block.chunks:
                counts[chunk.level] += 1
                nbytes[chunk.level] += chunk.nbytes
                token_layers[chunk.level] += span
                spilled += chunk.spill_bytes
                exact += chunk.exact_nbytes
        # A token counts at a level in proportion to its layers there (chunks of one block
        # may sit at different levels after a budget round).
        tokens = {lvl: round(n / layers) for lvl, n in token_layers.items()}
        return LevelStats(counts, nbytes, spilled, exact, self._index.hits, self._index.misses,
                          tokens)
