"""The engine's prefix cache: KV of finished generations, kept across requests in a KvStore.

After a generation, ``save`` puts the KV of every token the buffer holds (prompt and
generated, positions ``[0, len(buffer.tokens))``) into a ``kvstore.KvStore``, keyed by
chained hashes of 32-token blocks. Before the next prefill, ``restore`` writes the
longest stored prefix of the new prompt into the buffer it is about to use, past what
that buffer already holds exactly, so only the rest is prefilled: the next turn of a
chat, another conversation's turn after the buffer served someone else, a shared system
prompt. A stored block may sit at L1 (INT8) or L2 (INT4), where the policy or memory
pressure put it: it is dequantized into the buffer and stays at its level in the store.

Levels follow the live policy (engine/engine_policy.py): every ``save`` ends with a
re-level (engine/quality_guard.py): ``KvStore.apply_policy`` puts each block where the
seed's ``decide_level`` says with the policy's thresholds, recent window and sinks (the
attention sinks and the recent window of each sequence stay L0), within the quality
budget ``max_delta_ppl`` that the model's KV calibration prices, then the byte budget
(``host_pool_bytes``, the policy's ``io.host_pool_bytes``; by default sized from the
machine, engine/memory_budget.py) is enforced: least important first, unprotected chunks
down INT8 -> INT4 -> evicted; under a budget too small even for the protected ones, whole
blocks of the least recently used sessions go (a recompute later, never a quality loss).
bench/kv_ab.py measures what each step costs.

Exactness. L0 blocks are parked in float16 (``KvChunk.parked``), half the bytes of the
buffers' float32 (issue 11: float32 parking grew the engine 829 MiB in ten minutes), and
restored into float32. That is not bit for bit a cold run: measured on SmolLM2-135M with
446-518-token licence prompts restored whole from L0, the next token's logits were within
0.004 of a cold run's (max abs), the argmax and 32 greedy tokens identical; keeping the
most recent block in float32 changed nothing measurable (0.0032-0.0038 either way), so
every L0 block is float16. tests/engine/test_kv_reuse.py holds the bound at 0.02. A block
restored from INT8/INT4 is dequantized (INT8: ~0.01, INT4: ~0.25 on the same prompt).

``follow(policy)`` swaps the store's config for the policy's and re-levels what is parked
at once: a policy change reaches KV already parked, not only the next save.

``kv_levels`` reports the store: tokens and bytes per level, metadata included. L3 counts
the tokens evicted so far (gone, or on disk with a spill directory) and the bytes on disk.

Not thread-safe: it lives on the engine's one generation thread, as the buffers do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from inferos.engine.engine_policy import EnginePolicy
from inferos.engine.kv_buffers import KvBuffer, KvShape
from inferos.engine.quality_guard import QualityGuard
from inferos.kvstore.accounting import ModelKvShape, kv_bytes
from inferos.kvstore.levels import Level
from inferos.kvstore.store import KvStore, KvStoreConfig, PolicyRound

__all__ = ["PrefixCache"]


@dataclass
class _Counters:
    restored_tokens: int = 0  # tokens the store wrote into a buffer (not already there)
    restore_s: float = 0.0
    saves: int = 0
    saved_blocks: int = 0
    save_s: float = 0.0
    relevels: int = 0
    relevel_s: float = 0.0


class PrefixCache:
    """Moves KV between an engine's ``KvBuffer``s and a ``KvStore``."""

    def __init__(self, shape: KvShape, config: KvStoreConfig,
                 guard: QualityGuard | None = None) -> None:
        self.shape = shape
        self.store = KvStore(config)
        self.guard = guard if guard is not None else QualityGuard(None, 0.5)
        self.counters = _Counters()
        # The store's bytes after its last re-level, the figure memory reports read (on
        # any thread, without walking the store under the generation thread's feet).
        self.parked_bytes = 0

    @property
    def config(self) -> KvStoreConfig:
        return self.store.config

    def restore(self, buffer: KvBuffer, prompt: list[int], held: int, limit: int) -> int:
        """Fill ``buffer`` with the stored prefix of ``prompt``, up to ``limit`` tokens.

        ``held``: leading tokens of ``prompt`` the buffer already holds (kept as they are).
        Returns how many leading tokens of ``prompt`` the buffer holds now; its ``tokens``
        say so.
        """
        started = time.perf_counter()
        keys = [k[0] for k in buffer.keys]
        values = [v[0] for v in buffer.values]
        stored = self.store.load_into(prompt, keys, values, max_tokens=limit, start=held)
        if stored > held:
            buffer.tokens = list(prompt[:stored])
            buffer.exact_len = None
            self.counters.restored_tokens += stored - held
            held = stored
        self.counters.restore_s += time.perf_counter() - started
        return held

    def save(self, buffer: KvBuffer) -> int:
        """Store the buffer's full blocks not stored yet (of its exact tokens: none that
        an eviction inside the context moved); returns how many were new."""
        tokens = buffer.exact_tokens
        if len(tokens) < self.config.block_tokens:
            return 0
        started = time.perf_counter()
        new = self.store.put(tokens, [k[0] for k in buffer.keys],
                             [v[0] for v in buffer.values], enforce=False)
        self.counters.saves += 1
        self.counters.saved_blocks += new
        self.counters.save_s += time.perf_counter() - started
        self.relevel()
        return new

    def follow(self, policy: EnginePolicy) -> None:
        """Take ``policy``'s store settings and re-level the parked KV by them."""
        self.store.config = policy.store_config(self.store.config)
        self.guard.max_delta_ppl = policy.max_delta_ppl
        self.relevel()

    def relevel(self) -> PolicyRound:
        """Every parked block to the level the policy says, within both budgets."""
        started = time.perf_counter()
        done = self.guard.relevel(self.store)
        self.parked_bytes = self.store.nbytes()
        self.counters.relevels += 1
        self.counters.relevel_s += time.perf_counter() - started
        return done

    def clear(self) -> None:
        self.store = KvStore(self.store.config)
        self.parked_bytes = 0

    # -- accounting -------------------------------------------------------------------
    def kv_levels(self) -> dict[str, dict[str, int]]:
        """``{L0..L3: {tokens, bytes}}``, the shape the controller turns into metrics."""
        stats = self.store.stats()
        levels = {lvl.name: {"tokens": stats.tokens.get(lvl, 0), "bytes": stats.nbytes[lvl]}
                  for lvl in Level}
        levels["L3"] = {"tokens": stats.tokens.get(Level.L3, 0) + self.store.dropped_tokens,
                        "bytes": stats.spilled_bytes}
        return levels

    def stats(self) -> dict[str, Any]:
        stats = self.store.stats()
        held = sum(n for lvl, n in stats.tokens.items() if lvl is not Level.L3)
        model = ModelKvShape(self.shape.layers, self.shape.kv_heads, self.shape.head_dim)
        c = self.counters
        return {
            "blocks": len(self.store), "block_tokens": self.config.block_tokens,
            "bytes": stats.total_nbytes,
            # The same tokens held exactly in float16, as llama.cpp's default KV cache would
            # (and as L0 is parked: bytes == fp16_bytes while nothing is quantized).
            "fp16_bytes": kv_bytes(model, held, Level.L0, exact_itemsize=2),
            "exact_bytes": stats.exact_nbytes,
            "spilled_bytes": stats.spilled_bytes,
            "host_pool_bytes": self.config.host_pool_bytes,
            "block_hits": stats.hits, "block_misses": stats.misses,
            "dropped_blocks": self.store.dropped_blocks,
            "restored_tokens": c.restored_tokens,
            "restore_seconds": round(c.restore_s, 3),
            "saves": c.saves, "saved_blocks": c.saved_blocks,
            "save_seconds": round(c.save_s, 3),
            "relevels": c.relevels, "relevel_seconds": round(c.relevel_s, 3),
            "recent_window": self.config.recent_window,
            "sink_tokens": self.config.sink_tokens,
        }
