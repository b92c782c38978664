"""L3 eviction inside one live context: room for a context longer than the KV buffer.

When the live policy allows it (``kv.allow_evict``, off by default; read once per
generation, engine/runtime.py, which also gives the evictor the policy's recent window and
sinks, each at most a quarter of the context) and a prompt or a generation reaches the
end of its buffer, ``ContextEvictor``
cuts the least important 32-token blocks out of the buffer, StreamingLLM/H2O-style, and
the generation goes on in the room that frees:

- which blocks: importance as the kvstore scores it, ``alpha * attn + gamma * sem`` per
  block, averaged over layers (kvstore/importance.py: the graph returns no attention
  weights, so the last keys written stand in for the next queries); the first block (the
  attention sinks) and the last ``recent_window`` tokens are never candidates;
- how much: at least what the next run needs and at least ``fraction`` of the context,
  so that eviction happens once per stretch of tokens, not at every step;
- compaction: the graph reads only the attention mask's length, so the kept KV is moved
  down to close the gaps, and every moved key is re-rotated to its new position
  (kvstore/rotary.py) with the rotary frequencies measured from the graph itself
  (``measure_frequencies``). Values carry no position and move as they are.

bench/kv_quality.py measured the cost on real text at 2,048 tokens: evicting 25% of the
unprotected blocks this way raised perplexity by 0.11, 50% by 0.20; without the
re-rotation, by 54 and 82.

After a compaction, the buffer's KV past the first evicted position is no longer what a
prefill of its tokens would give: ``KvBuffer.exact_tokens`` stops there, so neither
prefix reuse nor the prefix cache ever takes it for exact KV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inferos.engine.kv_buffers import KvBuffer
from inferos.kvstore.importance import ImportanceWeights, attention_proxy, semantic_proxies
from inferos.kvstore.levels import DEFAULT_RECENT_WINDOW, DEFAULT_SINK_TOKENS
from inferos.kvstore.prefix_index import DEFAULT_BLOCK_TOKENS
from inferos.kvstore.rotary import compacted_shift, rotate_keys

__all__ = ["ContextEvictor", "EvictionConfig"]

N_PROBES = 8


@dataclass(frozen=True)
class EvictionConfig:
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    sink_tokens: int = DEFAULT_SINK_TOKENS
    recent_window: int = DEFAULT_RECENT_WINDOW
    fraction: float = 0.25  # of the context, at least, per eviction
    weights: ImportanceWeights = ImportanceWeights()


class ContextEvictor:
    """Frees room in a full ``KvBuffer`` by evicting and compacting (see module doc)."""

    def __init__(self, inv_freq: np.ndarray, config: EvictionConfig = EvictionConfig()
                 ) -> None:
        self.inv_freq = inv_freq
        self.config = config
        self.evictions = 0
        self.evicted_tokens = 0

    def candidates(self, used: int) -> list[tuple[int, int]]:
        """Evictable blocks of a context of ``used`` tokens: past the block of the sinks,
        before the recent window."""
        bt, c = self.config.block_tokens, self.config
        first = -(-c.sink_tokens // bt) * bt  # the first block boundary after the sinks
        return [(a, a + bt) for a in range(first, used - c.recent_window - bt + 1, bt)]

    def importance(self, buffer: KvBuffer, used: int, blocks: list[tuple[int, int]]
                   ) -> np.ndarray:
        w = self.config.weights
        window = max(1, min(self.config.recent_window, used))
        score = np.zeros(len(blocks))
        for key in buffer.keys:
            context = key[0, :, :used]
            attn = attention_proxy(context[:, -N_PROBES:], context, blocks)
            sem = semantic_proxies(context, blocks, context[:, used - window:])
            score += w.alpha * attn + w.gamma * sem
        return score / len(buffer.keys)

    def make_room(self, buffer: KvBuffer, need: int) -> int:
        """Evict so that ``need`` more tokens fit in ``buffer``; return tokens evicted.

        Raises ValueError when the protected part leaves no room (a buffer too small for
        the sinks, the recent window and ``need``)."""
        used = len(buffer.tokens)
        blocks = self.candidates(used)
        bt = self.config.block_tokens
        want = max(need - (buffer.shape.max_len - used), 1,
                   int(self.config.fraction * used))
        count = min(len(blocks), -(-want // bt))
        if count * bt < need - (buffer.shape.max_len - used):
            raise ValueError(f"a context of {buffer.shape.max_len} tokens cannot make room "
                             f"for {need} more: the sinks and the last "
                             f"{self.config.recent_window} tokens stay")
        order = np.argsort(self.importance(buffer, used, blocks), kind="stable")
        keep = np.ones(used, dtype=bool)
        for i in order[:count]:
            a, b = blocks[i]
            keep[a:b] = False
        self._compact(buffer, keep)
        self.evictions += 1
        self.evicted_tokens += count * bt
        return count * bt

    def _compact(self, buffer: KvBuffer, keep: np.ndarray) -> None:
        first = int(np.argmin(keep))  # the first evicted position: nothing before it moves
        tail = keep[first:]
        shift = compacted_shift(keep)[first:]
        kept = int(tail.sum())
        used = len(keep)
        for key, value in zip(buffer.keys, buffer.values, strict=True):
            k, v = key[0], value[0]
            moved_k = rotate_keys(k[:, first:used][:, tail], shift, inv_freq=self.inv_freq)
            moved_v = v[:, first:used][:, tail]  # fancy indexing: already a copy
            k[:, first:first + kept] = moved_k
            v[:, first:first + kept] = moved_v
        buffer.tokens = [t for t, k in zip(buffer.tokens, keep.tolist(), strict=True) if k]
        exact = len(buffer.exact_tokens)
        buffer.exact_len = min(exact, first)
