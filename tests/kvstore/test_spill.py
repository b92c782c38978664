"""Spill files: bit-exact round trips of exact and quantized payloads, no pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferos.kvstore.quantize import QuantizedTensor, quantize_int4, quantize_int8
from inferos.kvstore.spill import read_payload, write_payload


def _same(a: np.ndarray | QuantizedTensor, b: np.ndarray | QuantizedTensor) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    assert isinstance(b, QuantizedTensor)
    return (a.fmt == b.fmt and a.shape == b.shape and a.dtype == b.dtype
            and (a.group_size, a.group_axis) == (b.group_size, b.group_axis)
            and all(x.dtype == y.dtype and np.array_equal(x, y)
                    for x, y in ((a.codes, b.codes), (a.scale, b.scale), (a.zero, b.zero))))


def test_exact_payload_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(3, 32, 64)).astype(np.float16)
    values = rng.normal(size=(3, 32, 64)).astype(np.float16)
    size = write_payload(tmp_path / "a.npz", (keys, values))
    assert size == (tmp_path / "a.npz").stat().st_size
    k, v = read_payload(tmp_path / "a.npz")
    assert _same(k, keys) and _same(v, values)


def test_quantized_payload_round_trip_and_compression(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 32, 64)).astype(np.float32)
    qk, qv = quantize_int4(x, 32, 1), quantize_int8(x, 32, 2)
    write_payload(tmp_path / "q.npz", (qk, qv))
    k, v = read_payload(tmp_path / "q.npz")
    assert _same(k, qk) and _same(v, qv)
    # A zero tensor compresses to far less than its codes: the file is deflated.
    z = np.zeros((3, 256, 64), dtype=np.float32)
    size = write_payload(tmp_path / "z.npz", (quantize_int8(z, 32, 1), quantize_int8(z, 32, 2)))
    assert size < quantize_int8(z, 32, 1).nbytes / 4
