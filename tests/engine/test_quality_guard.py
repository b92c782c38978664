"""The quality guard on a real KvStore: parked KV within the ΔPPL budget a calibration
prices, promotions counted, and an honest null without a calibration."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from inferos.engine.quality_guard import QualityGuard
from inferos.kvstore.levels import Level
from inferos.kvstore.store import KvStore, KvStoreConfig

LAYERS, HEADS, DIM = 2, 3, 64


class Calibration:
    """The shape of engine/kv_calibration.py's KvCalibration.estimate, with round figures."""

    def __init__(self, per_level: Mapping[str, float]) -> None:
        self.per_level = per_level
        self.calls: list[dict[str, int]] = []

    def estimate(self, tokens_by_level: Mapping[str, int]) -> float:
        self.calls.append(dict(tokens_by_level))
        held = sum(tokens_by_level.values())
        return sum(self.per_level[k] * n for k, n in tokens_by_level.items()) / held \
            if held else 0.0


def _store(n: int = 256) -> KvStore:
    store = KvStore(KvStoreConfig(recent_window=32, sink_tokens=4))
    rng = np.random.default_rng(0)
    keys = [rng.normal(size=(HEADS, n, DIM)).astype(np.float32) for _ in range(LAYERS)]
    values = [rng.normal(size=(HEADS, n, DIM)).astype(np.float32) for _ in range(LAYERS)]
    ids = rng.integers(0, 49152, size=n).tolist()
    # zero probes: uniform attention, so every unprotected block scores ~0.4 (INT4)
    store.put(ids, keys, values, probes=[np.zeros((HEADS, 4, DIM), np.float32)] * LAYERS)
    return store


def test_within_budget_the_policy_spends_and_the_guard_stays_out() -> None:
    store = _store()
    guard = QualityGuard(Calibration({"L0": 0.0, "L1": 0.001, "L2": 0.02}), 0.5)
    guard.relevel(store)
    assert store.stats().tokens[Level.L2] == 192  # decide_level: INT4 for the middle
    assert guard.delta_ppl_est == pytest.approx(0.02 * 192 / 256)
    assert guard.promotions == 0 and guard.last_promotion_at is None


def test_over_budget_the_guard_promotes_and_counts_it() -> None:
    store = _store()
    calibration = Calibration({"L0": 0.0, "L1": 0.01, "L2": 1.0})
    guard = QualityGuard(calibration, 0.2)
    guard.relevel(store)
    assert guard.delta_ppl_est is not None and guard.delta_ppl_est <= 0.2
    assert guard.promotions == 1 and guard.last_promotion_at is not None
    assert guard.held_blocks > 0
    stats = store.stats()
    assert stats.tokens[Level.L0] > 64 and stats.tokens[Level.L2] <= 0.2 * 256
    assert all(set(call) == {"L0", "L1", "L2"} for call in calibration.calls)
    # Budget lowered below what the quantized blocks already cost: nothing goes lower,
    # and nothing quantized is "promoted" into float32 (its loss is in the data).
    before = store.stats()
    guard.max_delta_ppl = 0.0
    done = guard.relevel(store)
    assert done.moved == 0 and store.stats().tokens == before.tokens
    assert guard.promotions == 2
    assert guard.delta_ppl_est is not None and guard.delta_ppl_est > 0.0  # honest
    # A generous budget again: the policy spends it.
    guard.max_delta_ppl = 10.0
    guard.relevel(store)
    assert store.stats().tokens[Level.L2] == 192 and guard.promotions == 2
    assert guard.stats()["guard"] == {
        "max_delta_ppl": 10.0, "promotions": 2, "last_promotion_at": guard.last_promotion_at,
        "held_blocks": 0, "can_act": True, "reason": None}


def test_a_hard_byte_budget_still_wins() -> None:
    store = _store()
    exact = store.nbytes()  # parked as float16: a quarter of it needs INT4 for most
    store.config = KvStoreConfig(recent_window=32, sink_tokens=4, host_pool_bytes=exact // 4)
    guard = QualityGuard(Calibration({"L0": 0.0, "L1": 0.01, "L2": 1.0}), 0.0)
    guard.relevel(store)
    assert store.nbytes() <= exact // 4
    assert guard.delta_ppl_est is not None and guard.delta_ppl_est > 0.0


def test_without_a_calibration_the_estimate_is_null_and_says_why(tmp_path: Path) -> None:
    guard = QualityGuard.for_model(tmp_path, 0.5)  # no kv_calibration.json here
    store = _store()
    guard.relevel(store)
    assert store.stats().tokens[Level.L2] == 192  # decide_level alone
    stats = guard.stats()
    assert stats["delta_ppl_est"] is None and stats["calibrated"] is False
    assert stats["guard"]["can_act"] is False
    assert "kv_calibration.json" in stats["guard"]["reason"]
