"""Memory figures for the real model's KV shape, metadata counted."""

from __future__ import annotations

import numpy as np
import pytest

from inferos.kvstore.accounting import SMOLLM2_135M, kv_bytes, memory_report
from inferos.kvstore.levels import Level
from inferos.kvstore.quantize import KEY_GROUP_AXIS, VALUE_GROUP_AXIS, quantize_int4, quantize_int8


@pytest.mark.parametrize("n_tokens", [32, 100, 2048])
@pytest.mark.parametrize("level,quantizer", [(Level.L1, quantize_int8), (Level.L2, quantize_int4)])
def test_analytical_bytes_match_what_the_quantizer_stores(
    n_tokens: int, level: Level, quantizer: object
) -> None:
    m = SMOLLM2_135M
    kv = np.random.default_rng(0).normal(size=(m.n_kv_heads, n_tokens, m.head_dim))
    kv = kv.astype(np.float32)
    one_layer = (quantizer(kv, 32, KEY_GROUP_AXIS).nbytes  # type: ignore[operator]
                 + quantizer(kv, 32, VALUE_GROUP_AXIS).nbytes)  # type: ignore[operator]
    assert kv_bytes(m, n_tokens, level) == m.n_layers * one_layer


def test_fp16_bytes_per_token_of_the_real_model() -> None:
    # 30 layers x (K, V) x 3 heads x 64 dims x 2 bytes; RUNTIME_FACTS gives 46,080 in fp32.
    assert kv_bytes(SMOLLM2_135M, 1, Level.L0, exact_itemsize=2) == 23_040
    assert kv_bytes(SMOLLM2_135M, 1, Level.L0, exact_itemsize=4) == 46_080


def test_ratios_at_group_32_with_metadata() -> None:
    """Per 32 values: INT8 32 B + 4 B metadata = 36 B, INT4 16 + 4 = 20 B, FP16 64 B.

    So 0.5625 and 0.3125 of FP16: asymmetric groups of 32 with float16 scale and zero
    cannot reach 0.55 / 0.30 (llama.cpp's q4_1 is the same 20 B per 32).
    """
    rows = {r.setting.split(" ")[0]: r for r in memory_report(SMOLLM2_135M, 2048)}
    assert rows["int8"].ratio_vs_fp16 == pytest.approx(36 / 64)
    assert rows["int4"].ratio_vs_fp16 == pytest.approx(20 / 64)
    assert rows["fp32"].ratio_vs_fp16 == 2.0
    # Default mix: 68 exact tokens (sinks + recent window), the rest INT4.
    expected_mix = (kv_bytes(SMOLLM2_135M, 68, Level.L0)
                    + kv_bytes(SMOLLM2_135M, 2048 - 68, Level.L2)) / rows["fp16"].nbytes
    assert rows["mixed"].ratio_vs_fp16 == pytest.approx(expected_mix)
    assert 20 / 64 < expected_mix < 0.35


def test_larger_groups_cut_the_metadata_share() -> None:
    fp16 = kv_bytes(SMOLLM2_135M, 2048, Level.L0)
    assert kv_bytes(SMOLLM2_135M, 2048, Level.L1, group_size=64) / fp16 == pytest.approx(68 / 128)
    assert kv_bytes(SMOLLM2_135M, 2048, Level.L2, group_size=64) / fp16 == pytest.approx(36 / 128)
    assert kv_bytes(SMOLLM2_135M, 2048, Level.L2, group_size=64) / fp16 <= 0.30


def test_evicted_and_empty_cost_nothing() -> None:
    assert kv_bytes(SMOLLM2_135M, 2048, Level.L3) == 0
    assert kv_bytes(SMOLLM2_135M, 0, Level.L1) == 0
