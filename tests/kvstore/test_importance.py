"""Importance terms: each reacts to what it claims to observe, and the score combines them."""

from __future__ import annotations

import numpy as np
import pytest

from inferos.errors import ConfigError
from inferos.kvstore.importance import (
    ImportanceTerms,
    ImportanceWeights,
    age_term,
    attention_proxy,
    frequency_term,
    semantic_proxies,
    semantic_proxy,
)


def test_attention_proxy_favours_keys_aligned_with_the_probes() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(3, 128, 64)).astype(np.float32)
    direction = rng.normal(size=(3, 1, 64)).astype(np.float32)
    keys[:, 32:64] += 2 * direction  # block 1 points where the probes point
    probes = 2 * direction + 0.1 * rng.normal(size=(3, 4, 64)).astype(np.float32)
    attn = attention_proxy(probes, keys, [(0, 32), (32, 64), (64, 96), (96, 128)])
    assert attn.argmax() == 1
    assert attn[1] > 0.5 > max(attn[0], attn[2], attn[3])
    assert ((attn >= 0) & (attn < 1)).all()


def test_attention_proxy_is_one_half_for_uniform_attention() -> None:
    keys = np.ones((3, 96, 64), dtype=np.float32)
    probes = np.ones((3, 2, 64), dtype=np.float32)
    attn = attention_proxy(probes, keys, [(0, 32), (32, 96)])
    np.testing.assert_allclose(attn, 0.5)


def test_semantic_proxy_tracks_direction() -> None:
    rng = np.random.default_rng(1)
    window = rng.normal(size=(3, 64, 64)) + 3.0
    assert semantic_proxy(window[:, :32] * 2, window) > 0.95
    assert semantic_proxy(-window[:, :32], window) < 0.05
    assert semantic_proxy(np.zeros((3, 32, 64)), window) == 0.5


def test_frequency_and_age_terms_saturate_in_unit_range() -> None:
    w = ImportanceWeights(freq_half=2.0, age_half_life_s=10.0)
    assert frequency_term(0, w) == 0.0
    assert frequency_term(2, w) == 0.5
    assert frequency_term(100, w) > frequency_term(10, w) > frequency_term(2, w)
    assert age_term(0, w) == 0.0
    assert age_term(10 * 10**9, w) == pytest.approx(0.5)
    assert 0.99 < age_term(10**11, w) < 1.0
    assert age_term(10**14, w) <= 1.0


def test_score_is_the_weighted_sum() -> None:
    w = ImportanceWeights(alpha=0.5, beta=0.2, gamma=0.3, eta=0.4)
    terms = ImportanceTerms(attn=0.6, freq=0.5, sem=0.9, age=0.25)
    assert terms.score(w) == pytest.approx(0.5 * 0.6 + 0.2 * 0.5 + 0.3 * 0.9 - 0.4 * 0.25)


def test_weights_are_validated() -> None:
    with pytest.raises(ConfigError):
        ImportanceWeights(alpha=-1.0)
    with pytest.raises(ConfigError):
        ImportanceWeights(age_half_life_s=0.0)


def test_semantic_proxies_equal_one_range_at_a_time() -> None:
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(3, 200, 64)).astype(np.float32)
    keys[:, 40:72] = 0.0  # a zero mean key: neutral, as in semantic_proxy
    window = keys[:, -64:]
    ranges = [(0, 32), (40, 72), (32, 160), (199, 200)]
    expected = [semantic_proxy(keys[:, a:b], window) for a, b in ranges]
    np.testing.assert_allclose(semantic_proxies(keys, ranges, window), expected, atol=1e-12)
