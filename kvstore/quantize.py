"""Asymmetric group quantization of KV tensors to INT8 and INT4, in the KIVI layout.

Contract
--------
``quantize(x, fmt, group_size, group_axis)`` cuts ``x`` into groups of ``group_size``
consecutive elements along ``group_axis`` and stores, per group, unsigned codes and two
numbers: ``scale`` and ``zero`` (the group's minimum, the "zero-point" in value units), so
that ``x_hat = code * scale + zero``. ``dequantize`` gives back an array of the original
shape and dtype. For every element::

    |x - x_hat| <= scale / 2                       (exact arithmetic; ``half_step``)
    |x - x_hat| <= error_bound(q)                   (after rounding to the output dtype)

The bound holds by construction, not by luck: the stored ``zero`` is rounded *down* and
the stored ``scale`` *up* to the metadata dtype, and the codes are computed against those
stored numbers, so the top of every group still fits in ``max_code`` steps.

Which axis (KIVI, Liu et al. 2024): keys have a few outlier *channels* whose magnitude is
stable across tokens, so keys are grouped per channel — a group runs along the token axis
and one outlier channel does not spoil the scale of the others. Values have no such
channel structure and are consumed per token by the attention-weighted sum, so values are
grouped per token — a group runs along the channel axis. For a chunk shaped [H, T, D]
that is ``KEY_GROUP_AXIS = 1`` and ``VALUE_GROUP_AXIS = 2``.

Layout, after llama.cpp's ``gguf-py/gguf/quants.py``: the group axis is moved last, padded
to a multiple of the group size by repeating its edge element (which changes no group's
minimum or maximum), and viewed as ``(n_blocks, group_size)``; all arithmetic is then
vectorised over that array. INT4 packs two codes per byte: element ``2j`` in the low
nibble, ``2j + 1`` in the high nibble.

Metadata is float16 (as llama.cpp's q4_1/q8_1 and KIVI store it) when the tensor's
magnitudes allow it and every constant group's value is a float16, float32 otherwise
(inputs are float16 or float32, so a float32 zero-point holds any constant exactly);
either way it is counted in ``nbytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMATS",
    "INT4",
    "INT8",
    "KEY_GROUP_AXIS",
    "VALUE_GROUP_AXIS",
    "QuantFormat",
    "QuantizedTensor",
    "dequantize",
    "error_bound",
    "half_step",
    "pack_int4",
    "quantize",
    "quantize_int4",
    "quantize_int8",
    "quantized_nbytes",
    "round_trip",
    "unpack_int4",
]

KEY_GROUP_AXIS: Final = 1
"""Keys [H, T, D] are grouped per channel: a group runs along tokens."""
VALUE_GROUP_AXIS: Final = 2
"""Values [H, T, D] are grouped per token: a group runs along channels."""

DEFAULT_GROUP_SIZE: Final = 32

_FLOAT_DTYPES: Final = (np.dtype(np.float16), np.dtype(np.float32))
# Largest magnitude for which float16 metadata cannot overflow: the zero is rounded down
# by at most one ulp and the scale is at most 2 * 32768 / 15.
_F16_META_LIMIT: Final = 32768.0


@dataclass(frozen=True)
class QuantFormat:
    """An unsigned integer code width; every format the library knows is in ``FORMATS``."""

    name: str
    bits: int

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @property
    def codes_per_byte(self) -> int:
        return 8 // self.bits


INT8: Final = QuantFormat("int8", 8)
INT4: Final = QuantFormat("int4", 4)
FORMATS: Final = {fmt.name: fmt for fmt in (INT8, INT4)}


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Codes plus everything needed to restore the original shape and dtype.

    ``codes`` is uint8, ``(n_blocks, group_size // codes_per_byte)``; ``scale`` and
    ``zero`` are ``(n_blocks,)`` in ``meta_dtype``. ``shape``/``dtype`` are the original's.
    """

    fmt: QuantFormat
    codes: npt.NDArray[np.uint8]
    scale: np.ndarray
    zero: np.ndarray
    group_size: int
    group_axis: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def n_blocks(self) -> int:
        return int(self.codes.shape[0])

    @property
    def meta_dtype(self) -> np.dtype:
        return self.scale.dtype

    @property
    def nbytes(self) -> int:
        """Stored bytes: codes plus per-group scale and zero-point."""
        return int(self.codes.nbytes + self.scale.nbytes + self.zero.nbytes)


def quantized_nbytes(shape: tuple[int, ...], fmt: QuantFormat, group_size: int,
                     group_axis: int, meta_itemsize: int = 2) -> int:
    """``QuantizedTensor.nbytes`` of a tensor of ``shape``, before quantizing it (float16
    metadata unless told: see ``_meta_dtype`` for when it is float32)."""
    n = shape[group_axis]
    n_blocks = math.prod(shape) // n * -(-n // group_size)
    return n_blocks * (group_size // fmt.codes_per_byte + 2 * meta_itemsize)


def pack_int4(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Pack 4-bit codes (values 0..15) two per byte along the last axis (even length)."""
    assert codes.dtype == np.uint8, codes.dtype
    assert codes.shape[-1] % 2 == 0, codes.shape
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Inverse of ``pack_int4``: bit-exact for every code 0..15."""
    assert packed.dtype == np.uint8, packed.dtype
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _check_input(x: np.ndarray, fmt: QuantFormat, group_size: int) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"KV tensors are float16 or float32, got {x.dtype}")
    if x.size == 0:
        raise ValueError("cannot quantize an empty tensor")
    if fmt not in FORMATS.values():
        raise ValueError(f"unknown format {fmt}")
    if group_size < 1 or group_size % fmt.codes_per_byte:
        raise ValueError(f"group size {group_size} must be a positive multiple of "
                         f"{fmt.codes_per_byte} for {fmt.name}")
    if not np.isfinite(x).all():
        # Non-finite KV means the model already broke; quantizing would hide it.
        raise ValueError("KV tensor holds NaN or inf")


def _to_blocks(x: np.ndarray, axis: int, group_size: int) -> np.ndarray:
    """Group axis last, edge-padded to a multiple of the group size, as (n_blocks, G)."""
    moved = np.moveaxis(x, axis, -1)
    pad = -moved.shape[-1] % group_size
    if pad:
        moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)], mode="edge")
    return moved.reshape(-1, group_size)


def _from_blocks(blocks: np.ndarray, q: QuantizedTensor) -> np.ndarray:
    """Inverse of ``_to_blocks`` for an array of ``(n_blocks, G)`` per-element values."""
    moved_shape = list(np.moveaxis(np.empty(q.shape, dtype=np.bool_), q.group_axis, -1).shape)
    n = moved_shape[-1]
    moved_shape[-1] = n + (-n % q.group_size)
    moved = blocks.reshape(moved_shape)[..., :n]
    return np.moveaxis(moved, -1, q.group_axis)


def _round_to(values: np.ndarray, dtype: np.dtype, direction: float) -> np.ndarray:
    """Nearest ``dtype`` value on the ``direction`` side of ``values`` (float64 in, out)."""
    cast = values.astype(dtype)
    wrong_side = (cast.astype(np.float64) - values) * direction < 0
    toward = np.array(np.inf * direction, dtype=dtype)
    # nextafter runs on every element, chosen or not: at the dtype's extreme it overflows to
    # inf where the cast was already exact (so not on the wrong side, and not used).
    with np.errstate(over="ignore"):
        stepped = np.nextafter(cast, toward)
    return np.where(wrong_side, stepped, cast)


def _meta_dtype(lo: np.ndarray, hi: np.ndarray) -> np.dtype:
    """float16 unless it would overflow or make a constant group inexact."""
    peak = max(float(np.abs(lo).max()), float(np.abs(hi).max()))
    if peak > _F16_META_LIMIT:
        return np.dtype(np.float32)
    # A constant group is stored as scale 0 and zero = its value: exact only if the
    # value itself is a float16. (All-zero groups always are.)
    constant = lo[hi == lo]
    if (constant.astype(np.float16).astype(np.float64) != constant).any():
        return np.dtype(np.float32)
    return np.dtype(np.float16)


def quantize(
    x: npt.ArrayLike,
    fmt: QuantFormat,
    group_size: int = DEFAULT_GROUP_SIZE,
    group_axis: int = -1,
) -> QuantizedTensor:
    """Quantize ``x`` asymmetrically per group of ``group_size`` along ``group_axis``."""
    arr = np.asarray(x)
    _check_input(arr, fmt, group_size)
    if not -arr.ndim <= group_axis < arr.ndim:
        raise ValueError(f"group axis {group_axis} out of range for {arr.ndim} dimensions")
    axis = group_axis % arr.ndim
    # float64 arithmetic: max - min of two float32 values may overflow float32.
    blocks = _to_blocks(arr, axis, group_size).astype(np.float64)
    lo = blocks.min(axis=1)
    hi = blocks.max(axis=1)
    meta_dtype = _meta_dtype(lo, hi)
    zero = _round_to(lo, meta_dtype, -1.0)
    zero64 = zero.astype(np.float64)
    scale = _round_to((hi - zero64) / fmt.max_code, meta_dtype, +1.0)
    scale64 = scale.astype(np.float64)
    # A constant (or all-zero) group has scale 0: every code is 0 and zero is the value.
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(scale64[:, None] > 0, (blocks - zero64[:, None]) / scale64[:, None], 0.0)
    codes = np.clip(np.rint(steps), 0, fmt.max_code).astype(np.uint8)
    if fmt.bits == 4:
        codes = pack_int4(codes)
    assert codes.shape == (blocks.shape[0], group_size // fmt.codes_per_byte), codes.shape
    return QuantizedTensor(fmt, codes, scale, zero, group_size, axis, arr.shape, arr.dtype)


def quantize_int8(
    x: npt.ArrayLike, group_size: int = DEFAULT_GROUP_SIZE, group_axis: int = -1
) -> QuantizedTensor:
    """``quantize`` to 8-bit codes: 255 steps per group."""
    return quantize(x, INT8, group_size, group_axis)


def quantize_int4(
    x: npt.ArrayLike, group_size: int = DEFAULT_GROUP_SIZE, group_axis: int = -1
) -> QuantizedTensor:
    """``quantize`` to 4-bit codes packed two per byte: 15 steps per group."""
    return quantize(x, INT4, group_size, group_axis)


def _codes(q: QuantizedTensor) -> np.ndarray:
    return unpack_int4(q.codes) if q.fmt.bits == 4 else q.codes


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """Restore an array of ``q.shape`` and ``q.dtype`` within ``error_bound(q)``."""
    scale = q.scale.astype(np.float64)[:, None]
    zero = q.zero.astype(np.float64)[:, None]
    blocks = _codes(q).astype(np.float64) * scale + zero
    # The top code may land just past the dtype's largest finite value when the input
    # touched it; clipping moves x_hat toward x, so the bound still holds.
    info = np.finfo(q.dtype)
    np.clip(blocks, float(info.min), float(info.max), out=blocks)
    out = _from_blocks(blocks, q).astype(q.dtype)
    assert out.shape == q.shape and out.dtype == q.dtype
    return out


def half_step(q: QuantizedTensor) -> np.ndarray:
    """The analytical bound ``scale / 2`` per element, shaped like the original (float64)."""
    per_block = q.scale.astype(np.float64) / 2
    return _from_blocks(np.repeat(per_block[:, None], q.group_size, axis=1), q)


def error_bound(q: QuantizedTensor) -> np.ndarray:
    """Per-element bound on ``|x - dequantize(q)|``: ``scale / 2`` plus the output rounding.

    Rounding the float64 reconstruction to the output dtype adds at most half an ulp of
    the group's largest magnitude.
    """
    scale = q.scale.astype(np.float64)
    zero = q.zero.astype(np.float64)
    top = np.maximum(np.abs(zero), np.abs(zero + q.fmt.max_code * scale))
    rounding = top * float(np.finfo(q.dtype).eps) / 2 + float(np.finfo(q.dtype).smallest_subnormal)
    per_block = scale / 2 + rounding
    return _from_blocks(np.repeat(per_block[:, None], q.group_size, axis=1), q)


def round_trip(
    x: npt.ArrayLike,
    fmt: QuantFormat,
    group_size: int = DEFAULT_GROUP_SIZE,
    group_axis: int = -1,
) -> np.ndarray:
    """``dequantize(quantize(...))``: what attention sees after a stay at a level."""
    return dequantize(quantize(x, fmt, group_size, group_axis))
