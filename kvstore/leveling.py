"""Level and budget policy of a ``KvStore``: ``apply_policy`` and ``enforce_budget``.

Contract: these functions move a store's chunks between levels (and drop or spill whole
blocks); they never add blocks and never change what ``match``/``load_into`` return for a
block that stays. ``KvStore.apply_policy`` and ``KvStore.enforce_budget`` delegate here;
call them through the store.

Levels and loss. Quantization rounds data away for good: a chunk's ``loss_level`` is the
lossiest level its data has been at. ``apply_policy`` never moves a chunk above its loss
level: an INT8 chunk re-leveled to L0 would hold float32 bytes of INT8 quality, four
times the memory for nothing, and L0 would no longer mean exact. Holding it where it is
already stops any further loss. Only a recompute (the chunk dropped, its prompt prefilled
again) makes its KV exact again.

Quality budget. ``apply_policy(quality, cost)`` first plans ``decide_level``'s answer for
every chunk, then asks ``cost`` (tokens per loss level -> estimated delta-PPL, e.g. a
calibration measured on real text) what that plan would cost. While the plan's cost is
above ``quality.max_delta_ppl``, the most important blocks the plan would demote are
lifted back to their loss level (exact blocks stay L0), one at a time; evicted (L3)
tokens cost a recompute, not quality, and are not counted. Planning before moving means
a block the budget keeps is never quantized and restored again.

Protection: a block is protected (never quantized) when it overlaps the first
``sink_tokens`` or the last ``recent_window`` tokens of the longest stored sequence
through it, or is pinned (``KvStore.is_protected``). Eviction (L3) without a spill
directory drops a whole block, and only a leaf (no stored block continues it): a dropped
block in the middle of a chain would strand every block after it. With a spill directory
any block may go to disk; it comes back.

Demotion under budget works in rounds, each in ascending importance, stopping as soon as
the store fits: first any float32 L0 chunk left is held in float16 (still L0: the
precision most engines' KV caches call full, 2^-11 relative error; the sinks and the recent
window too; ``KvStore.put`` parks in float16 already, so only a chunk promoted back to L0
is left to halve), then L0 -> L1, then L1 -> L2, then L2 -> L3. Quantizing everything once
costs less quality than evicting anything (see bench/kv_quality.py), so the store
exhausts the cheaper step before it takes the next. The budget is a hard limit: if the
protected blocks alone overflow it, they go to L3 whole (least recently used first),
which costs a recompute when their prompt returns, never quality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inferos.kvstore.chunk import KvChunk
from inferos.kvstore.levels import Level, QualitySignal, decide_level

if TYPE_CHECKING:
    from inferos.kvstore.store import KvStore, StoredBlock

__all__ = ["PolicyRound", "QualityCost", "apply_policy", "enforce_budget"]

QualityCost = Callable[[Mapping[Level, int]], float]
"""Estimated delta-PPL of holding ``tokens[level]`` tokens at each of L0..L2."""


@dataclass(frozen=True)
class PolicyRound:
    """What one ``apply_policy`` did: chunk moves (budget rounds included), and the
    blocks the quality budget kept above ``decide_level``'s answer."""

    moved: int
    lifted_blocks: int = 0


def apply_policy(store: KvStore, quality: QualitySignal | None = None,
                 cost: QualityCost | None = None) -> PolicyRound:
    """Move every chunk to ``decide_level``'s answer, never above its loss level, then
    enforce the byte budget. With ``quality`` and ``cost``, the plan is first kept
    within ``quality.max_delta_ppl`` (see the module docstring)."""
    store.rescore()
    cfg = store.config
    plan: list[tuple[StoredBlock, list[Level]]] = []
    drops: list[StoredBlock] = []
    for block in store.blocks():
        targets: list[Level] = []
        for chunk in block.chunks:
            target = decide_level(
                chunk, chunk.importance, cfg.thresholds, context_len=block.context_len,
                recent_window=cfg.recent_window, sink_tokens=cfg.sink_tokens,
                quality=quality)
            if target is Level.L3 and cfg.spill_dir is None and block.children:
                target = Level.L2  # dropping it would strand its continuations
            targets.append(target if target is Level.L3 else max(target, chunk.loss_level))
        if cfg.spill_dir is None and Level.L3 in targets:
            drops.append(block)  # a leaf: evicted whole
        else:
            plan.append((block, targets))
    lifted = 0
    if quality is not None and cost is not None:
        lifted = _keep_within(plan, quality.max_delta_ppl, cost)
    moved = 0
    for block in drops:
        if block.key in store._index:
            store._drop(block)
            moved += 1
    for block, targets in plan:
        if block.key not in store._index:
            continue  # dropped with an earlier block of its chain
        for chunk, target in zip(block.chunks, targets, strict=True):
            if target is not chunk.level:
                chunk.move_to(target, cfg.spill_dir)
                moved += 1
    return PolicyRound(moved + enforce_budget(store), lifted)


def _keep_within(plan: list[tuple[StoredBlock, list[Level]]], max_delta_ppl: float,
                 cost: QualityCost) -> int:
    """Lift the plan's new losses, most important block first, until ``cost`` of the
    planned loss levels is within ``max_delta_ppl``; return the blocks lifted."""
    layers = max((len(b.chunks) for b, _ in plan), default=1)
    token_layers = dict.fromkeys((Level.L0, Level.L1, Level.L2), 0)
    for block, targets in plan:
        span = block.tokens[1] - block.tokens[0]
        for chunk, target in zip(block.chunks, targets, strict=True):
            if target is not Level.L3:
                token_layers[max(target, chunk.loss_level)] += span

    def planned_cost() -> float:
        return cost({lvl: round(n / layers) for lvl, n in token_layers.items()})

    if planned_cost() <= max_delta_ppl:
        return 0
    losing = [(block, targets) for block, targets in plan
              if any(t is not Level.L3 and t > c.loss_level
                     for c, t in zip(block.chunks, targets, strict=True))]
    losing.sort(key=lambda bt: -sum(c.importance for c in bt[0].chunks))
    lifted = 0
    for block, targets in losing:
        span = block.tokens[1] - block.tokens[0]
        for i, (chunk, target) in enumerate(zip(block.chunks, targets, strict=True)):
            if target is not Level.L3 and target > chunk.loss_level:
                token_layers[target] -= span
                token_layers[chunk.loss_level] += span
                targets[i] = chunk.loss_level
        lifted += 1
        if planned_cost() <= max_delta_ppl:
            break
    return lifted


def enforce_budget(store: KvStore) -> int:
    """Demote chunks until the store fits ``host_pool_bytes``; return the moves.

    Unprotected chunks go down the levels first (see the module docstring). When that
    is not enough, the budget is a hard limit: protected blocks go to L3 too, least
    recently used first, whole and exact (spilled as they are, or dropped: a dropped
    block's KV is recomputed when its prompt comes back, so it costs time, never
    quality). Protection means "never quantized", not "kept whatever the memory".
    """
    total = store.nbytes()
    if total <= store.config.host_pool_bytes:
        return 0
    store.rescore()
    moves = 0
    for chunk in sorted(store.chunks(), key=lambda c: c.importance):
        before = chunk.nbytes
        if chunk.to_half():
            total += chunk.nbytes - before
            moves += 1
            if total <= store.config.host_pool_bytes:
                return moves
    total, planned = _straight_to_int4(store, total)
    moves += planned
    if total <= store.config.host_pool_bytes:
        return moves
    for target in (Level.L1, Level.L2):
        candidates = [c for b in store.blocks() if not store.is_protected(b)
                      for c in b.chunks if c.level < target]
        for chunk in sorted(candidates, key=lambda c: c.importance):
            before = chunk.nbytes
            chunk.move_to(target)
            total += chunk.nbytes - before
            moves += 1
            if total <= store.config.host_pool_bytes:
                return moves
    return moves + _evict_until(store, total)


def _straight_to_int4(store: KvStore, total: int) -> tuple[int, int]:
    """When even INT8 for every unprotected chunk would not fit, quantize the least
    important L0 chunks that the INT4 round would take anyway straight to INT4: the
    end state of the two rounds, one quantization error instead of two, a third of
    the work. Sizes come from the layout (``KvChunk.nbytes_at``); the rounds after
    this correct any misestimate. Returns the new total and the moves."""
    candidates = sorted((c for b in store.blocks() if not store.is_protected(b)
                         for c in b.chunks if c.level < Level.L2),
                        key=lambda c: c.importance)

    def size(chunk: KvChunk, level: Level) -> int:
        return chunk.nbytes if chunk.level is level else chunk.nbytes_at(level)

    projected = total - sum(c.nbytes - size(c, Level.L1) for c in candidates
                            if c.level < Level.L1)
    moves = 0
    for chunk in candidates:
        if projected <= store.config.host_pool_bytes:
            break
        projected -= size(chunk, Level.L1) - size(chunk, Level.L2)
        if chunk.level is Level.L0:
            before = chunk.nbytes
            chunk.move_to(Level.L2)
            total += chunk.nbytes - before
            moves += 1
    return total, moves


def _evict_until(store: KvStore, total: int) -> int:
    total, moves = _evict(store, total, protected=False)
    if total > store.config.host_pool_bytes:
        total, more = _evict(store, total, protected=True)
        moves += more
    return moves


def _evict(store: KvStore, total: int, *, protected: bool) -> tuple[int, int]:
    """Evict blocks until ``total`` fits: unprotected ones by importance, or (last
    resort) any, least recently used first and the later tokens of a chain first."""
    moves = 0
    spill = store.config.spill_dir
    while total > store.config.host_pool_bytes:
        # Without a spill directory only leaves may go: see the module docstring.
        candidates = [b for b in store.blocks()
                      if (protected or not store.is_protected(b))
                      and b.level is not Level.L3 and (spill is not None or not b.children)]
        if not candidates:
            break
        if protected:
            victim = min(candidates, key=lambda b: (
                max(c.last_access_ns for c in b.chunks), -b.tokens[0]))
        else:
            victim = min(candidates, key=lambda b: max(c.importance for c in b.chunks))
        total -= sum(c.nbytes for c in victim.chunks)
        if spill is None:
            store._drop(victim)
        else:
            for chunk in victim.chunks:
                chunk.move_to(Level.L3, spill)
        moves += 1
    return total, moves
