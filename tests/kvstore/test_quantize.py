"""Quantizer round trips: error within the analytical bound, shapes, dtypes, edge groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferos.kvstore.quantize import (
    INT4,
    INT8,
    KEY_GROUP_AXIS,
    VALUE_GROUP_AXIS,
    QuantFormat,
    dequantize,
    error_bound,
    half_step,
    pack_int4,
    quantize,
    quantize_int4,
    quantize_int8,
    quantized_nbytes,
    unpack_int4,
)

FORMATS = [INT8, INT4]


def _check_round_trip(x: np.ndarray, fmt: QuantFormat, group_size: int, axis: int) -> None:
    q = quantize(x, fmt, group_size, axis)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isfinite(y).all()
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert (err <= error_bound(q)).all(), float((err - error_bound(q)).max())


@st.composite
def kv_arrays(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    magnitude = draw(st.sampled_from([1e-30, 1e-6, 1.0, 300.0, 6e4, 1e30, 3e38]))
    if dtype == np.float16:
        magnitude = min(max(magnitude, 6e-8), 6e4)
    magnitude = float(np.array(magnitude, dtype=dtype))
    elements = st.floats(-magnitude, magnitude, width=16 if dtype == np.float16 else 32)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    group_size = draw(st.sampled_from([2, 4, 8, 16, 32, 64]))
    axis = draw(st.integers(0, len(shape) - 1))
    return x, group_size, axis


@settings(max_examples=120, deadline=None)
@given(case=kv_arrays(), fmt=st.sampled_from(FORMATS))
def test_round_trip_within_bound_for_any_shape_range_and_group(
    case: tuple[np.ndarray, int, int], fmt: QuantFormat
) -> None:
    x, group_size, axis = case
    _check_round_trip(x, fmt, group_size, axis)


@settings(max_examples=40, deadline=None)
@example(value=-3.4028234663852886e38, shape=(1, 1, 1), fmt=FORMATS[0])  # float32's extreme
@example(value=3.4028234663852886e38, shape=(2, 3, 1), fmt=FORMATS[-1])
@given(
    value=st.floats(width=32, allow_nan=False, allow_infinity=False),
    shape=hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=20),
    fmt=st.sampled_from(FORMATS),
)
def test_constant_groups_come_back_exactly(
    value: float, shape: tuple[int, ...], fmt: QuantFormat
) -> None:
    x = np.full(shape, value, dtype=np.float32)
    q = quantize(x, fmt, 8, KEY_GROUP_AXIS)
    assert (q.scale == 0).all()
    assert np.array_equal(dequantize(q), x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_zero_tensor_is_exact_without_warnings(fmt: QuantFormat, dtype: type) -> None:
    # filterwarnings=error turns any divide-by-zero RuntimeWarning into a failure here.
    x = np.zeros((3, 40, 64), dtype=dtype)
    y = dequantize(quantize(x, fmt, 32, VALUE_GROUP_AXIS))
    assert y.dtype == dtype and not np.signbit(y).any() and not y.any()


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_zero_and_nonzero_groups(fmt: QuantFormat) -> None:
    x = np.zeros((2, 64, 64), dtype=np.float32)
    x[:, 32:, :] = np.random.default_rng(1).normal(size=(2, 32, 64))
    q = quantize(x, fmt, 32, KEY_GROUP_AXIS)
    y = dequantize(q)
    assert np.array_equal(y[:, :32], x[:, :32])
    assert (np.abs(y - x) <= error_bound(q)).all()


@pytest.mark.parametrize("dtype,extreme", [(np.float32, 3.4e38), (np.float16, 65504.0)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_extreme_magnitudes_do_not_overflow(dtype: type, extreme: float, fmt: QuantFormat
                                            ) -> None:
    x = np.array([[-extreme, extreme, 0.0, 1.0] * 8]).astype(dtype)
    _check_round_trip(x, fmt, 32, -1)


@pytest.mark.parametrize("fmt,levels", [(INT8, 255), (INT4, 15)])
def test_mse_and_max_error_match_uniform_rounding(fmt: QuantFormat, levels: int) -> None:
    """Round-to-nearest leaves errors ~U(-s/2, s/2): MSE ~ s^2/12, max <= s/2."""
    x = np.random.default_rng(2).normal(size=(3, 256, 64)).astype(np.float32)
    for axis in (KEY_GROUP_AXIS, VALUE_GROUP_AXIS):
        q = quantize(x, fmt, 32, axis)
        err = dequantize(q).astype(np.float64) - x
        step = 2 * half_step(q)
        mse = float(np.mean(err**2))
        expected = float(np.mean(step**2)) / 12
        # Truncation instead of rounding would give s^2/3: four times over.
        assert 0.8 * expected < mse < 1.2 * expected, (mse, expected)
        assert (np.abs(err) <= error_bound(q)).all()
        # The scale is the group's range over the code count, rounded up to float16.
        assert float(step.max()) <= 1.002 * float(np.ptp(x)) / levels


def test_keys_per_channel_beat_per_token_on_outlier_channels() -> None:
    """The reason for KIVI's key axis: a few channels carry large, stable offsets."""
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(3, 128, 64)).astype(np.float32)
    keys[:, :, [5, 40]] += np.float32(30.0)  # outlier channels, constant over tokens
    per_channel = dequantize(quantize_int4(keys, 32, KEY_GROUP_AXIS))
    per_token = dequantize(quantize_int4(keys, 32, VALUE_GROUP_AXIS))
    mse_channel = float(np.mean((per_channel - keys) ** 2))
    mse_token = float(np.mean((per_token - keys) ** 2))
    assert mse_channel * 4 < mse_token, (mse_channel, mse_token)


def test_partial_groups_are_padded_and_cropped() -> None:
    x = np.random.default_rng(4).normal(size=(3, 70, 64)).astype(np.float32)
    q = quantize_int8(x, 32, KEY_GROUP_AXIS)
    assert q.n_blocks == 3 * 64 * 3  # ceil(70 / 32) groups per channel
    assert dequantize(q).shape == (3, 70, 64)


@pytest.mark.parametrize("fmt,codes_bytes", [(INT8, 32), (INT4, 16)])
def test_nbytes_counts_codes_and_metadata(fmt: QuantFormat, codes_bytes: int) -> None:
    x = np.random.default_rng(5).normal(size=(3, 64, 64)).astype(np.float32)
    q = quantize(x, fmt, 32, VALUE_GROUP_AXIS)
    n_groups = 3 * 64 * 2
    assert q.meta_dtype == np.float16
    assert q.nbytes == n_groups * (codes_bytes + 2 + 2)


def test_metadata_falls_back_to_float32_beyond_float16_range() -> None:
    x = np.array([[1e6, -1e6] * 16], dtype=np.float32)
    q = quantize_int8(x)
    assert q.meta_dtype == np.float32
    _check_round_trip(x, INT8, 32, -1)


def test_int4_packing_round_trip_is_bit_exact() -> None:
    codes = np.random.default_rng(6).integers(0, 16, size=(50, 32), dtype=np.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (50, 16) and packed.dtype == np.uint8
    assert np.array_equal(unpack_int4(packed), codes)
    every_byte = np.arange(256, dtype=np.uint8).reshape(1, 256)
    assert np.array_equal(pack_int4(unpack_int4(every_byte)), every_byte)


def test_int4_codes_use_both_nibbles_in_order() -> None:
    codes = np.array([[1, 2, 15, 0]], dtype=np.uint8)
    assert pack_int4(codes).tolist() == [[0x21, 0x0F]]


def test_int4_codes_span_the_full_range() -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    q = quantize_int4(x)
    codes = unpack_int4(q.codes)
    assert codes.min() == 0 and codes.max() == 15


@pytest.mark.parametrize(
    "x,kwargs",
    [
        (np.array([[np.nan] * 32], dtype=np.float32), {}),
        (np.array([[np.inf] * 32], dtype=np.float32), {}),
        (np.ones((2, 32), dtype=np.int32), {}),
        (np.ones((2, 32), dtype=np.float64), {}),
        (np.ones((0, 32), dtype=np.float32), {}),
        (np.ones((2, 32), dtype=np.float32), {"group_size": 0}),
        (np.ones((2, 32), dtype=np.float32), {"group_axis": 2}),
    ],
)
def test_rejects_what_is_not_kv(x: np.ndarray, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        quantize_int8(x, **kwargs)


def test_int4_rejects_odd_group_size() -> None:
    with pytest.raises(ValueError):
        quantize_int4(np.ones((2, 33), dtype=np.float32), group_size=33)


@pytest.mark.parametrize("fmt", [INT8, INT4])
@pytest.mark.parametrize("shape,axis", [((3, 32, 64), 1), ((3, 32, 64), 2), ((2, 45, 64), 1)])
def test_quantized_nbytes_predicts_the_stored_size(fmt: QuantFormat, shape: tuple[int, ...],
                                                   axis: int) -> None:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    assert quantized_nbytes(shape, fmt, 32, axis) == quantize(x, fmt, 32, axis).nbytes
