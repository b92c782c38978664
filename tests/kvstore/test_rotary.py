"""Rotary shifts of stored keys: the Llama convention, composition, compaction shifts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inferos.kvstore.rotary import (
    compacted_shift,
    frequencies,
    measured_frequencies,
    rotate_keys,
)

BASE = 100000.0


def _rope_reference(x: np.ndarray, position: float, base: float) -> np.ndarray:
    """Rotary embedding written as complex multiplication of (x_i, x_{i+D/2}) pairs."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    theta = position * base ** (-np.arange(half) * 2.0 / x.shape[-1])
    out = z * np.exp(1j * theta)
    return np.concatenate([out.real, out.imag], axis=-1)


def test_matches_rotary_embedding_of_the_new_position() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3, 1, 64))
    at_10 = _rope_reference(raw, 10, BASE)
    at_3 = _rope_reference(raw, 3, BASE)
    np.testing.assert_allclose(rotate_keys(at_10, -7, BASE), at_3, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(a=st.integers(-5000, 5000), b=st.integers(-5000, 5000))
def test_shifts_compose_and_preserve_norms(a: int, b: int) -> None:
    keys = np.random.default_rng(1).normal(size=(2, 5, 64))
    twice = rotate_keys(rotate_keys(keys, a, BASE), b, BASE)
    np.testing.assert_allclose(twice, rotate_keys(keys, a + b, BASE), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(twice, axis=-1), np.linalg.norm(keys, axis=-1))


def test_dot_products_depend_only_on_distance() -> None:
    """Why re-rotation works: q.k depends on the positions' difference alone."""
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(1, 1, 64)), rng.normal(size=(1, 1, 64))
    near = float((_rope_reference(q, 100, BASE) * _rope_reference(k, 90, BASE)).sum())
    moved = float((_rope_reference(q, 60, BASE)
                   * rotate_keys(_rope_reference(k, 90, BASE), -40, BASE)).sum())
    assert abs(near - moved) < 1e-9


def test_zero_shift_is_identity_and_dtype_is_kept() -> None:
    keys = np.random.default_rng(3).normal(size=(3, 4, 64)).astype(np.float32)
    out = rotate_keys(keys, 0, BASE)
    assert out.dtype == np.float32 and np.array_equal(out, keys)


def test_compacted_shift_counts_evicted_tokens_before_each_kept_one() -> None:
    keep = np.array([1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
    assert compacted_shift(keep).tolist() == [0, 0, -2, -3, -3]


def test_frequencies_measured_from_two_positions_drive_the_same_rotation() -> None:
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(3, 1, 64))
    measured = measured_frequencies(_rope_reference(raw, 0, BASE), _rope_reference(raw, 1, BASE))
    np.testing.assert_allclose(measured, frequencies(BASE, 64), atol=1e-12)
    keys = _rope_reference(rng.normal(size=(3, 4, 64)), 50, BASE)
    np.testing.assert_allclose(rotate_keys(keys, -9, inv_freq=measured),
                               rotate_keys(keys, -9, BASE), atol=1e-9)
