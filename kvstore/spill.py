"""L3 spill files: a chunk's payload, compressed on disk, read back bit for bit.

A payload is the pair (keys, values), each either an exact array (a chunk spilled from
L0) or a ``QuantizedTensor`` (spilled from L1/L2: the codes are written, not the floats,
so the file is as small as the level and reading it back restores exactly what was in
memory). Files are ``np.savez_compressed`` archives (zip/deflate) holding only plain
arrays, and are read with ``allow_pickle=False``: a spill file is data, never code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferos.kvstore.quantize import FORMATS, QuantizedTensor

__all__ = ["Payload", "PayloadPart", "read_payload", "write_payload"]

PayloadPart = np.ndarray | QuantizedTensor
Payload = tuple[PayloadPart, PayloadPart]

_PARTS = ("keys", "values")


def _flatten(name: str, part: PayloadPart) -> dict[str, np.ndarray]:
    if isinstance(part, np.ndarray):
        return {f"{name}.array": part}
    return {
        f"{name}.codes": part.codes,
        f"{name}.scale": part.scale,
        f"{name}.zero": part.zero,
        f"{name}.format": np.array(part.fmt.name),
        f"{name}.layout": np.array([part.group_size, part.group_axis], dtype=np.int64),
        f"{name}.shape": np.array(part.shape, dtype=np.int64),
        f"{name}.dtype": np.array(part.dtype.str),
    }


def _unflatten(name: str, archive: np.lib.npyio.NpzFile) -> PayloadPart:
    if f"{name}.array" in archive.files:
        return np.asarray(archive[f"{name}.array"])
    group_size, group_axis = (int(v) for v in archive[f"{name}.layout"])
    return QuantizedTensor(
        fmt=FORMATS[str(archive[f"{name}.format"])],
        codes=archive[f"{name}.codes"],
        scale=archive[f"{name}.scale"],
        zero=archive[f"{name}.zero"],
        group_size=group_size,
        group_axis=group_axis,
        shape=tuple(int(v) for v in archive[f"{name}.shape"]),
        dtype=np.dtype(str(archive[f"{name}.dtype"])),
    )


def write_payload(path: Path, payload: Payload) -> int:
    """Write ``payload`` compressed to ``path`` (suffix ``.npz``); return the file's bytes."""
    arrays: dict[str, np.ndarray] = {}
    for name, part in zip(_PARTS, payload, strict=True):
        arrays.update(_flatten(name, part))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    return path.stat().st_size


def read_payload(path: Path) -> Payload:
    """Read back what ``write_payload`` wrote: same arrays, same dtypes, same bits."""
    with np.load(path, allow_pickle=False) as archive:
        keys = _unflatten("keys", archive)
        values = _unflatten("values", archive)
    return keys, values
