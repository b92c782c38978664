"""KvStore: prefix reuse across turns, budget-driven demotion with protection, spill, policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from inferos.kvstore.chunk import ChunkId
from inferos.kvstore.levels import Level, QualitySignal
from inferos.kvstore.store import KvStore, KvStoreConfig, QualityCost

LAYERS, HEADS, DIM = 2, 3, 64


def _kv(n: int, seed: int = 0, max_len: int | None = None
        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Engine-like buffers [H, max_len, D] per layer, filled for the first n tokens."""
    rng = np.random.default_rng(seed)
    size = (HEADS, max_len or n, DIM)
    keys = [rng.normal(size=size).astype(np.float32) for _ in range(LAYERS)]
    values = [rng.normal(size=size).astype(np.float32) for _ in range(LAYERS)]
    return keys, values


def _parked(a: np.ndarray) -> np.ndarray:
    """What the store gives back of float32 KV it parked: float16 rounding, as float32."""
    return a.astype(np.float16).astype(np.float32)


def _tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed + 100).integers(0, 49152, size=n).tolist()


class FakeClock:
    """A settable monotonic clock, so age is a fact of the test and not of the machine."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def test_put_and_get_round_trip_in_float16_from_longer_buffers() -> None:
    store = KvStore()
    keys, values = _kv(100, max_len=256)
    ids = _tokens(100)
    assert store.put(ids, keys, values) == 3  # 96 tokens in full blocks
    got_k, got_v = store.get(ids)
    for layer in range(LAYERS):
        assert got_k[layer].dtype == np.float32  # restored as the engine's dtype
        assert np.array_equal(got_k[layer], _parked(keys[layer][:, :96]))
        assert np.array_equal(got_v[layer], _parked(values[layer][:, :96]))
        assert not np.array_equal(got_k[layer], keys[layer][:, :96])  # rounded: float16
    keys[0][:] = 0  # the engine reuses its buffer: the store kept copies
    assert np.array_equal(store.get(ids)[0][1], got_k[1])


def test_next_turn_reuses_the_previous_turns_blocks() -> None:
    store = KvStore()
    turn1 = _tokens(100)
    store.put(turn1, *_kv(100))
    turn2 = turn1 + _tokens(60, seed=1)
    assert store.match(turn2) == 96
    keys2, values2 = _kv(160, seed=5)
    assert store.put(turn2, keys2, values2) == 2  # blocks 3 and 4 are new
    assert store.match(turn2) == 160
    stats = store.stats()
    assert stats.hits == 3 + 5 and stats.misses == 2
    assert stats.chunks[Level.L0] == 5 * LAYERS


def test_shared_system_prompt_hits_and_divergence_misses() -> None:
    store = KvStore()
    system = _tokens(64)
    store.put(system + _tokens(64, seed=1), *_kv(128))
    other = system + _tokens(64, seed=2)
    assert store.match(other) == 64
    k_buf = [np.zeros((HEADS, 200, DIM), np.float32) for _ in range(LAYERS)]
    v_buf = [np.zeros((HEADS, 200, DIM), np.float32) for _ in range(LAYERS)]
    stored_k, _ = _kv(128)
    assert store.load_into(other, k_buf, v_buf) == 64
    assert np.array_equal(k_buf[1][:, :64], _parked(stored_k[1][:, :64]))
    assert not k_buf[1][:, 64:].any()
    assert store.load_into(system + _tokens(64, seed=1), k_buf, v_buf, max_tokens=127) == 96


def test_load_into_leaves_what_the_buffer_already_holds() -> None:
    store = KvStore()
    ids = _tokens(128)
    keys, values = _kv(128)
    store.put(ids, keys, values)
    k_buf = [np.full((HEADS, 200, DIM), 7.0, np.float32) for _ in range(LAYERS)]
    v_buf = [np.full((HEADS, 200, DIM), 7.0, np.float32) for _ in range(LAYERS)]
    assert store.load_into(ids, k_buf, v_buf, start=40) == 128
    assert (k_buf[0][:, :40] == 7.0).all() and (v_buf[1][:, :40] == 7.0).all()
    assert np.array_equal(k_buf[0][:, 40:128], _parked(keys[0][:, 40:128]))
    assert np.array_equal(v_buf[1][:, 40:128], _parked(values[1][:, 40:128]))
    assert store.load_into(ids, k_buf, v_buf, start=200) == 128  # nothing to write
    assert all(c.reuse_count == 2 for c in store.chunks())


def _fill(store: KvStore, n: int = 512, seed: int = 0) -> tuple[list[int], list[np.ndarray],
                                                                   list[np.ndarray]]:
    ids = _tokens(n, seed)
    keys, values = _kv(n, seed)
    store.put(ids, keys, values)
    return ids, keys, values


def test_budget_demotion_keeps_sinks_and_recent_window_exact() -> None:
    exact = 16 * LAYERS * 2 * HEADS * 32 * DIM * 4  # 512 tokens, float32
    store = KvStore(KvStoreConfig(host_pool_bytes=exact // 3))
    ids, keys, values = _fill(store)
    stats = store.stats()
    assert stats.total_nbytes <= exact // 3
    for block in store.blocks():
        protected = block.tokens[0] < 4 or block.tokens[1] > 512 - 64
        assert store.is_protected(block) == protected
        if protected:
            assert all(c.level is Level.L0 for c in block.chunks)
    # First everything went to float16 (still L0), then unprotected chunks were quantized
    # until the store fit: all but at most one of them.
    assert stats.chunks[Level.L0] <= 3 * LAYERS + 1
    assert stats.chunks[Level.L1] + stats.chunks[Level.L2] >= 13 * LAYERS - 1
    got_k, got_v = store.get(ids)
    for block in store.blocks():
        a, b = block.tokens
        for layer, chunk in enumerate(block.chunks):
            err = max(np.abs(got_k[layer][:, a:b] - keys[layer][:, a:b]).max(),
                      np.abs(got_v[layer][:, a:b] - values[layer][:, a:b]).max())
            assert err <= chunk.max_abs_error
            assert chunk.halved or chunk.level is not Level.L0
            if chunk.level is Level.L0:  # float16: 2^-11 of the largest magnitude, |x| < 8
                assert 0 < err <= 8 * 2.0**-11


def test_exact_kv_is_parked_in_float16_at_half_the_bytes_of_float32() -> None:
    exact = 16 * LAYERS * 2 * HEADS * 32 * DIM * 4  # 512 tokens, float32
    store = KvStore(KvStoreConfig(host_pool_bytes=2**40))  # no pressure at all
    ids, keys, values = _fill(store)
    stats = store.stats()
    # Two bytes a value, where the engine's buffers hold four: before issue 11 the store
    # held exact KV in float32 until the budget pressed.
    assert stats.chunks[Level.L0] == 16 * LAYERS and stats.total_nbytes == exact // 2
    assert stats.nbytes[Level.L0] == store.nbytes() == exact // 2
    assert stats.exact_nbytes == exact  # the float32 the engine handed over
    assert all(c.halved and c.level is Level.L0 for c in store.chunks())
    got_k, _ = store.get(ids)
    # float16 rounding: 2^-11 relative, 2^-24 absolute among the subnormals
    np.testing.assert_allclose(got_k[1], keys[1][:, :512], rtol=2.0**-11, atol=2.0**-24)
    assert got_k[1].dtype == np.float32


def test_budget_demotes_the_least_important_first() -> None:
    n = 512
    ids = _tokens(n)
    keys, values = _kv(n)
    rng = np.random.default_rng(9)
    direction = rng.normal(size=(HEADS, 1, DIM)).astype(np.float32)
    for k in keys:
        k[:, 160:192] += 3 * direction  # block 5 is what the probes look at
    probes = [np.repeat(3 * direction, 4, axis=1) for _ in range(LAYERS)]
    per_block_exact = LAYERS * 2 * HEADS * 32 * DIM * 4
    # Room for everything in float16 but one float32 block's worth: after the halving
    # round, a few INT8 demotions suffice.
    store = KvStore(KvStoreConfig(host_pool_bytes=7 * per_block_exact))
    store.put(ids, keys, values, probes=probes)
    levels = {b.tokens[0] // 32: b.level for b in store.blocks()}
    assert levels[5] is Level.L0
    assert Level.L1 in levels.values() and Level.L2 not in levels.values()
    hot = next(b for b in store.blocks() if b.tokens == (160, 192))
    cold = next(b for b in store.blocks() if b.tokens == (128, 160))
    assert hot.chunks[0].attn > 0.5 > cold.chunks[0].attn
    assert store.chunk(ChunkId(1, (0, HEADS), (160, 192), hot.key)) is hot.chunks[1]


def test_tight_budget_spills_and_restores_from_disk(tmp_path: Path) -> None:
    store = KvStore(KvStoreConfig(host_pool_bytes=1, spill_dir=tmp_path))
    ids, keys, values = _fill(store, 256)
    stats = store.stats()
    # A budget of one byte is a hard limit: everything goes to disk, the protected blocks
    # (block 0 and the last two) too, but as they were, at L0 (in float16 by then).
    assert stats.chunks[Level.L3] == 8 * LAYERS and stats.total_nbytes == 0
    assert stats.nbytes[Level.L3] == 0 and stats.spilled_bytes > 0
    assert len(list(tmp_path.iterdir())) == 8 * LAYERS
    got_k, _ = store.get(ids)
    for block in store.blocks():
        a, b = block.tokens
        chunk = block.chunks[0]
        assert np.abs(got_k[0][:, a:b] - keys[0][:, a:b]).max() <= chunk.max_abs_error
        # Unprotected: spilled after the INT8 and INT4 rounds, the INT4 payload comes back.
        assert chunk.spilled_from is (Level.L0 if store.is_protected(block) else Level.L2)
        if store.is_protected(block):
            np.testing.assert_allclose(got_k[0][:, a:b], keys[0][:, a:b], rtol=2.0**-11,
                                       atol=2.0**-24)


def test_hard_budget_drops_the_least_recently_used_session_first() -> None:
    clock = FakeClock()
    block_bytes = LAYERS * 2 * HEADS * 32 * DIM * 4
    # Room for one 96-token session at L0 in float16 (all of it protected), not two.
    store = KvStore(KvStoreConfig(host_pool_bytes=2 * block_bytes), clock=clock)
    old, new = _tokens(96, seed=1), _tokens(96, seed=2)
    store.put(old, *_kv(96, seed=1))
    clock.now = 10**9
    store.put(new, *_kv(96, seed=2))
    assert store.stats().total_nbytes <= 2 * block_bytes
    assert store.match(new) == 96  # the session just parked is whole
    assert store.match(old) < 96  # the older one lost its tail, never quantized
    assert all(b.level is Level.L0 for b in store.blocks())
    assert store.dropped_blocks >= 2 and store.dropped_tokens == 32 * store.dropped_blocks
    assert store.stats().tokens[Level.L0] == 32 * len(store)


def test_without_spill_only_leaves_are_dropped() -> None:
    store = KvStore(KvStoreConfig(host_pool_bytes=1, recent_window=0, sink_tokens=0))
    system = _tokens(64)
    a = system + _tokens(64, seed=1)
    b = system + _tokens(64, seed=2)
    store.put(a, *_kv(128, seed=1))
    assert len(store) == 0  # a single chain empties leaf by leaf
    store = KvStore(KvStoreConfig(host_pool_bytes=10**9, recent_window=0, sink_tokens=0))
    store.put(a, *_kv(128, seed=1))
    store.put(b, *_kv(128, seed=2))
    assert len(store) == 6
    block_bytes = next(store.blocks()).chunks[0].exact_nbytes * LAYERS
    # Six INT4 blocks take 6 * 20/128 of a float32 block, over half of one: some must go.
    budget = block_bytes // 2
    store = KvStore(KvStoreConfig(host_pool_bytes=budget, recent_window=0, sink_tokens=0))
    store.put(a, *_kv(128, seed=1))
    store.put(b, *_kv(128, seed=2))
    assert store.stats().total_nbytes <= budget
    assert store.match(system) == 64  # the trunk stays; only branch tips went
    stored = {blk.key for blk in store.blocks()}
    assert all(blk.parent is None or blk.parent in stored for blk in store.blocks())
    assert len(store) < 6


def test_apply_policy_follows_decide_level_and_quality(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KvStore(KvStoreConfig(spill_dir=tmp_path), clock=clock)
    ids = _tokens(256)
    keys, values = _kv(256)
    # Zero probes attend uniformly: attn 0.5 everywhere, so a fresh unreused chunk scores
    # about 0.5 * 0.5 + 0.3 * sem ~ 0.4: INT4 under the default thresholds.
    store.put(ids, keys, values, probes=[np.zeros((HEADS, 4, DIM), np.float32)] * LAYERS)
    store.apply_policy()
    levels = [b.level for b in store.blocks()]
    assert levels[0] is Level.L0 and levels[-2:] == [Level.L0, Level.L0]
    assert levels[1:-2] == [Level.L2] * 5
    clock.now = 10**15  # a long-parked session: age pushes it below the eviction threshold
    assert store.apply_policy().moved == 5 * LAYERS
    assert [b.level for b in store.blocks()][1:-2] == [Level.L3] * 5
    assert store.match(ids) == 256  # spilled, still reusable
    # Overspent quality: nothing goes lower; the spilled INT4 chunks come back as they
    # were spilled (their loss is in the data: moving them to L0 would restore nothing).
    store.apply_policy(QualitySignal(delta_ppl_est=1.0, max_delta_ppl=0.5))
    levels = [b.level for b in store.blocks()]
    assert levels[0] is Level.L0 and levels[-2:] == [Level.L0, Level.L0]
    assert levels[1:-2] == [Level.L2] * 5
    assert not list(tmp_path.iterdir())


def test_apply_policy_never_lifts_a_chunk_above_its_loss() -> None:
    clock = FakeClock()
    store = KvStore(KvStoreConfig(recent_window=0, sink_tokens=0), clock=clock)
    ids, _, _ = _fill(store, 128)
    for chunk in store.chunks():
        chunk.move_to(Level.L1)
    assert all(c.loss_level is Level.L1 for c in store.chunks())
    store.config = KvStoreConfig(recent_window=10**6, sink_tokens=0)  # all protected: L0
    assert store.apply_policy().moved == 0
    assert all(b.level is Level.L1 for b in store.blocks())
    assert store.loss_tokens() == {Level.L0: 0, Level.L1: 128, Level.L2: 0}
    # An explicit promotion still moves it, and the loss stays on record.
    store.promote(next(store.chunks()).id)
    assert next(store.chunks()).level is Level.L0
    assert next(store.chunks()).loss_level is Level.L1


def _cost(per_level: dict[Level, float]) -> QualityCost:
    """A calibration stand-in: the token-weighted mean of a delta-PPL per level."""
    def cost(tokens: Mapping[Level, int]) -> float:
        held = sum(tokens.values())
        return sum(per_level[lvl] * n for lvl, n in tokens.items()) / held if held else 0.0
    return cost


def test_a_quality_budget_lifts_the_most_important_planned_demotions() -> None:
    store = KvStore(KvStoreConfig(recent_window=32, sink_tokens=4))
    ids = _tokens(256)
    keys, values = _kv(256)
    store.put(ids, keys, values, probes=[np.zeros((HEADS, 4, DIM), np.float32)] * LAYERS)
    for i, block in enumerate(store.blocks()):  # importance rises along the sequence
        for chunk in block.chunks:
            chunk.attn, chunk.sem = 0.5, i / 10
    cost = _cost({Level.L0: 0.0, Level.L1: 0.05, Level.L2: 1.0})
    # Unbounded, the six unprotected blocks go to INT4: 192 of 256 tokens at 1.0 -> 0.75.
    free = KvStore(store.config)
    free.put(ids, keys, values, probes=[np.zeros((HEADS, 4, DIM), np.float32)] * LAYERS)
    for i, block in enumerate(free.blocks()):
        for chunk in block.chunks:
            chunk.attn, chunk.sem = 0.5, i / 10
    assert free.apply_policy().lifted_blocks == 0
    assert cost(free.loss_tokens()) == pytest.approx(0.75)
    # Within 0.3: the most important demotions are lifted until the plan fits.
    done = store.apply_policy(QualitySignal(delta_ppl_est=0.0, max_delta_ppl=0.3), cost)
    assert done.lifted_blocks > 0
    assert cost(store.loss_tokens()) <= 0.3
    levels = [b.level for b in store.blocks()]
    kept = [i for i, lvl in enumerate(levels[1:-1], 1) if lvl is Level.L0]
    demoted = [i for i, lvl in enumerate(levels[1:-1], 1) if lvl is not Level.L0]
    assert kept and demoted and min(kept) > max(demoted)  # the important ones stayed exact
    # The next round keeps them without quantizing anything again.
    assert store.apply_policy(QualitySignal(cost(store.loss_tokens()), 0.3), cost).moved == 0


def test_apply_policy_without_spill_never_strands_a_chain() -> None:
    clock = FakeClock()
    store = KvStore(clock=clock)
    ids, _, _ = _fill(store, 256)
    clock.now = 10**15
    store.apply_policy()
    assert store.match(ids) == 256
    assert [b.level for b in store.blocks()][1:-2] == [Level.L2] * 5


def test_demote_and_promote_check_direction() -> None:
    store = KvStore()
    _fill(store, 128)
    block = list(store.blocks())[1]
    cid = block.chunks[0].id
    store.demote(cid, Level.L2)
    with pytest.raises(ValueError):
        store.demote(cid, Level.L1)
    store.promote(cid, Level.L1)
    with pytest.raises(ValueError):
        store.promote(cid, Level.L2)
    k, v = store.restore(cid)
    assert k.shape == (HEADS, 32, DIM) and store.chunk(cid).level is Level.L1


def test_metrics_shape() -> None:
    store = KvStore()
    _fill(store, 64)
    metrics = store.stats().as_metrics()
    assert set(metrics) >= {"L0", "L1", "L2", "L3", "bytes", "prefix_hits", "prefix_misses"}
    # float16: two bytes a value
    assert metrics["L0"] == {"chunks": 2 * LAYERS, "bytes": 2 * LAYERS * 2 * HEADS * 32 * DIM * 2}


def test_chunks_the_int4_round_takes_are_quantized_once() -> None:
    from dataclasses import replace

    store = KvStore(KvStoreConfig(host_pool_bytes=2**40))
    _fill(store)
    exact = store.nbytes()
    # parked in float16: exact is half of float32; all unprotected INT8: ~0.64, all
    # INT4: ~0.44 of that
    store.config = replace(store.config, host_pool_bytes=exact // 2)
    moves = store.enforce_budget()
    stats = store.stats()
    unprotected = 13 * LAYERS
    assert stats.total_nbytes <= exact // 2
    assert stats.chunks[Level.L1] > 0 and stats.chunks[Level.L2] > 0
    assert stats.chunks[Level.L1] + stats.chunks[Level.L2] == unprotected
    # nothing left to halve (parked in float16), each unprotected chunk quantized once:
    # INT4 ones too
    assert moves == unprotected


def test_a_budget_below_what_is_parked_holds_after_every_save() -> None:
    per_session = 4 * LAYERS * 2 * HEADS * 32 * DIM * 2  # 128 tokens parked in float16
    budget = 3 * per_session  # ten sessions come: over three times what fits
    store = KvStore(KvStoreConfig(host_pool_bytes=budget))
    for seed in range(10):
        store.put(_tokens(128, seed), *_kv(128, seed))
        assert store.nbytes() <= budget, seed
    assert store.stats().total_nbytes <= budget < 10 * per_session
    assert store.stats().tokens[Level.L1] + store.stats().tokens[Level.L2] > 0
