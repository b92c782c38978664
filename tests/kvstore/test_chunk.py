"""KvChunk level moves: reversibility, error accounting, spill and drop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferos.kvstore.chunk import ChunkDroppedError, ChunkId, KvChunk
from inferos.kvstore.levels import Level
from inferos.kvstore.quantize import INT4, INT8, KEY_GROUP_AXIS, VALUE_GROUP_AXIS


def _kv(seed: int = 0, t: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(3, t, 64)).astype(np.float32)
    keys[:, :, 7] += 20  # an outlier channel, as real keys have
    values = rng.normal(size=(3, t, 64)).astype(np.float32)
    return keys, values


def _chunk(keys: np.ndarray, values: np.ndarray) -> KvChunk:
    return KvChunk.exact(ChunkId(2, (0, 3), (64, 64 + keys.shape[1]), b"p"), keys, values)


def test_l0_is_exact_and_accounts_exact_bytes() -> None:
    keys, values = _kv()
    chunk = _chunk(keys, values)
    k, v = chunk.restore()
    assert np.array_equal(k, keys) and np.array_equal(v, values)
    assert chunk.nbytes == chunk.exact_nbytes == 2 * keys.nbytes
    assert chunk.quant is None


@pytest.mark.parametrize("level,fmt", [(Level.L1, INT8), (Level.L2, INT4)])
def test_quantized_levels_restore_shape_dtype_and_values_within_bound(
    level: Level, fmt: object
) -> None:
    keys, values = _kv()
    chunk = _chunk(keys, values)
    chunk.move_to(level)
    assert chunk.level is level
    assert chunk.quant is not None
    qk, qv = chunk.quant
    assert qk.fmt is fmt and qv.fmt is fmt
    assert (qk.group_axis, qv.group_axis) == (KEY_GROUP_AXIS, VALUE_GROUP_AXIS)
    assert chunk.nbytes < chunk.exact_nbytes
    k, v = chunk.restore()
    assert k.shape == keys.shape and k.dtype == keys.dtype
    err = max(np.abs(k - keys).max(), np.abs(v - values).max())
    assert 0 < err <= chunk.max_abs_error
    chunk.move_to(Level.L0)  # promotion keeps the dequantized values
    k0, v0 = chunk.restore()
    assert np.array_equal(k0, k) and np.array_equal(v0, v)
    assert chunk.nbytes == chunk.exact_nbytes


def test_successive_demotions_add_their_bounds() -> None:
    keys, values = _kv(1)
    chunk = _chunk(keys, values)
    chunk.move_to(Level.L1)
    after_int8 = chunk.max_abs_error
    chunk.move_to(Level.L2)
    assert chunk.max_abs_error > after_int8
    k, v = chunk.restore()
    assert max(np.abs(k - keys).max(), np.abs(v - values).max()) <= chunk.max_abs_error


@pytest.mark.parametrize("from_level", [Level.L0, Level.L1, Level.L2])
def test_spill_restores_exactly_what_was_spilled(tmp_path: Path, from_level: Level) -> None:
    keys, values = _kv(2)
    chunk = _chunk(keys, values)
    chunk.move_to(from_level)
    before = chunk.restore()
    held = chunk.nbytes
    chunk.move_to(Level.L3, tmp_path)
    assert chunk.level is Level.L3 and chunk.nbytes == 0
    assert chunk.spill_path is not None and chunk.spill_path.exists()
    assert 0 < chunk.spill_bytes
    after = chunk.restore()  # read from disk, still L3
    assert chunk.level is Level.L3
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    chunk.move_to(Level.L0)
    assert chunk.spill_path is None and not list(tmp_path.iterdir())
    assert all(np.array_equal(a, b) for a, b in zip(before, chunk.restore(), strict=True))
    if from_level is not Level.L0:
        assert held < chunk.nbytes


def test_spilled_chunk_returns_to_its_level(tmp_path: Path) -> None:
    chunk = _chunk(*_kv(3))
    chunk.move_to(Level.L2)
    codes = chunk.quant[0].codes.copy()  # type: ignore[index]
    chunk.move_to(Level.L3, tmp_path)
    chunk.move_to(Level.L2)
    assert chunk.quant is not None
    assert np.array_equal(chunk.quant[0].codes, codes)


def test_dropped_chunk_cannot_be_read() -> None:
    chunk = _chunk(*_kv(4))
    chunk.move_to(Level.L3)
    assert chunk.nbytes == 0
    with pytest.raises(ChunkDroppedError):
        chunk.restore()
    with pytest.raises(LookupError):
        chunk.move_to(Level.L0)


def test_exact_rejects_mismatched_shapes() -> None:
    keys, values = _kv()
    with pytest.raises(ValueError):
        KvChunk.exact(ChunkId(0, (0, 3), (0, 64)), keys, values[:, :32])
    with pytest.raises(ValueError):
        KvChunk.exact(ChunkId(0, (0, 3), (0, 32)), keys, values)


def test_halved_l0_restores_float32_within_float16_rounding(tmp_path: Path) -> None:
    keys, values = _kv()
    chunk = _chunk(keys, values)
    assert chunk.to_half() and chunk.halved and chunk.level is Level.L0
    assert not chunk.to_half()  # once is all
    assert chunk.nbytes == chunk.exact_nbytes // 2
    k, v = chunk.restore()
    assert k.dtype == np.float32 and k.shape == keys.shape
    assert 0 < np.abs(k - keys).max() <= chunk.max_abs_error <= 32 * 2.0**-11
    chunk.move_to(Level.L3, tmp_path)  # spilled as float16, read back the same
    chunk.move_to(Level.L0)
    assert np.array_equal(chunk.restore()[1], v)
    chunk.move_to(Level.L1)  # quantized from the float16 values, errors add up
    assert np.abs(chunk.restore()[0] - keys).max() <= chunk.max_abs_error


def test_values_beyond_float16_are_not_halved() -> None:
    keys, values = _kv()
    keys[0, 0, 0] = 1e6
    chunk = _chunk(keys, values)
    assert not chunk.to_half() and not chunk.halved
    assert np.array_equal(chunk.restore()[0], keys)
