"""The engine's memory: what the machine has, what the engine may take, what it holds.

Three parts of the engine's memory grow with use, and each has a bound:

- the weights and the runtime (ONNX Runtime, the tokenizer, Python), resident once the
  model is loaded: fixed, measured as the process RSS when the KV pool is made
  (``KvPool.rss_at_start``: the session is open by then, the pool's pages are not yet
  touched);
- the batch buffer (engine/kv_buffers.py): per layer ``[rows, H, ctx, D]`` float32, np.zeros,
  so a row's pages become resident only as far as it is written. Every row can be touched
  (the pool hands out the lowest free row, and ``scheduler.max_batch`` may be raised live),
  so the bound is ``rows x ctx x bytes_per_token``. ``batch_rows`` keeps that within
  ``BATCH_BUFFER_SHARE`` of the machine's memory by giving the pool fewer rows: at 4k
  context a row is 180 MiB, sixteen of them 2.9 GiB;
- the parked KV of the prefix cache, bounded by ``io.host_pool_bytes``.

``default_host_pool_bytes`` sizes that last bound from the machine:
``min(4 GiB, MemTotal / 8)``, rounded down to a MiB (MemTotal, not MemAvailable: the default
must not depend on what else happened to run at start-up). An explicit
``io.host_pool_bytes`` wins. With the pool's rows at most a quarter of MemTotal and the
weights of a small model, the engine stays under half of the machine.

``engine_memory`` reads what is held now (process RSS, the batch buffer's resident pages,
the parked KV) beside the budget (start RSS + every row the pool may touch + host pool);
a figure this machine cannot measure (no /proc, no mincore) is None, never made up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "BATCH_BUFFER_SHARE",
    "HOST_POOL_CAP_BYTES",
    "HOST_POOL_SHARE",
    "EngineMemory",
    "MemInfo",
    "batch_rows",
    "default_host_pool_bytes",
    "engine_memory",
    "machine_memory",
    "parse_meminfo",
    "process_rss_bytes",
    "release_free_heap",
    "resident_bytes",
    "weights_bytes",
]

MIB: Final = 2**20
HOST_POOL_CAP_BYTES: Final = 4096 * MIB  # the default before it was sized from the machine
HOST_POOL_SHARE: Final = 8  # the default pool is MemTotal / 8, at most the cap
BATCH_BUFFER_SHARE: Final = 4  # the batch buffer's rows together at most MemTotal / 4
MEMINFO: Final = Path("/proc/meminfo")


@dataclass(frozen=True)
class MemInfo:
    """The machine's memory in bytes (``/proc/meminfo``'s MemTotal and MemAvailable)."""

    total: int
    available: int | None = None


def parse_meminfo(text: str) -> MemInfo | None:
    """``/proc/meminfo``'s text -> MemInfo; None when MemTotal is missing or unreadable."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            # The kernel writes "kB" and means KiB.
            scale = 1024 if parts[1:2] == ["kB"] else 1
            fields[name] = int(parts[0]) * scale
    if not fields.get("MemTotal"):
        return None
    return MemInfo(fields["MemTotal"], fields.get("MemAvailable"))


def machine_memory() -> MemInfo | None:
    """This machine's memory: /proc/meminfo, else psutil (Windows, macOS), else None."""
    try:
        info = parse_meminfo(MEMINFO.read_text())
    except OSError:
        info = None
    if info is not None:
        return info
    try:
        import psutil

        vm = psutil.virtual_memory()
        return MemInfo(int(vm.total), int(vm.available))
    except Exception:  # psutil missing or unsupported here: nothing measured
        return None


def default_host_pool_bytes(info: MemInfo | None) -> int:
    """The default ``io.host_pool_bytes``: ``min(4 GiB, MemTotal / 8)`` rounded down to a
    MiB (at least 64 MiB); 4 GiB when the machine's memory is unknown."""
    if info is None:
        return HOST_POOL_CAP_BYTES
    share = info.total // HOST_POOL_SHARE // MIB * MIB
    return max(64 * MIB, min(HOST_POOL_CAP_BYTES, share))


def batch_rows(row_bytes: int, limit: int, info: MemInfo | None) -> int:
    """How many rows of ``row_bytes`` the batch buffer gets: ``limit``, or fewer when
    that many would take more than MemTotal / ``BATCH_BUFFER_SHARE``; at least one."""
    if info is None or row_bytes <= 0:
        return limit
    return max(1, min(limit, info.total // BATCH_BUFFER_SHARE // row_bytes))


def process_rss_bytes() -> int | None:
    """This process's resident set (``/proc/self/statm``), else psutil's, else None."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported here: nothing measured
        return None


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_ubyte)]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC: Final = _libc()


def _malloc_trim() -> Any:
    try:
        trim = _LIBC.malloc_trim  # glibc's; musl and other libcs have none
    except AttributeError:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM: Final = None if _LIBC is None else _malloc_trim()


def release_free_heap() -> bool:
    """Gives the pages of memory malloc holds free back to the kernel (glibc's
    ``malloc_trim(0)``, which also releases whole free pages inside its heaps, not only at
    their top); False where there is no such call (not glibc), and nothing is done.

    Why (issue 11): every run frees blocks of sizes that change with the shape (prefill
    logits of a chunk, [S, 49152] float32, up to 50 MB; a decode step's [rows, 49152];
    numpy temporaries of the prefix cache), and glibc raises its mmap threshold to the
    largest block freed (up to 32 MiB), so after a while these come from its heaps (a
    fixed threshold, tried, took back about half of the growth); what is freed there
    stays resident, and the next block of a new size cannot always reuse it. Measured in
    process on SmolLM2-135M (bench/rss_growth.py: ctx 2048, 64 MiB host pool, full;
    varied prompts, 1-4 rows): malloc's bytes in use stayed flat while RSS less the batch
    buffer's pages and the parked KV grew with its free bytes, 65 MiB per 100 requests
    at first (prompts <= 500 tokens), levelling off ~55-70 MiB up; with a trim after each
    generation 9.6, and at prompts <= 1900 tokens 9.4 against 18.5, 69 MiB lower. ONNX
    Runtime without its CPU arena or memory patterns grew as much as without the trim.
    A trim costs ~2.3 ms, between generations; decode and prefill speed did not change."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def resident_bytes(arrays: Iterable[np.ndarray]) -> int | None:
    """Bytes of ``arrays`` resident in RAM now (mincore(2) over their pages); None where
    mincore is not available. Pages of an np.zeros array never written are not resident:
    this is the batch buffer as the kernel holds it, not as it was allocated."""
    if _LIBC is None:
        return None
    page = mmap.PAGESIZE
    total = 0
    for array in arrays:
        start = array.ctypes.data // page * page  # mincore wants a page-aligned start
        length = array.ctypes.data + array.nbytes - start
        pages = -(-length // page)
        vector = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vector) != 0:
            return None
        resident = np.ctypeslib.as_array(vector)
        # whole pages: an array that does not start or end on a page boundary shares its
        # edge pages with its neighbours, which must not count for more than it holds
        total += min(int(np.count_nonzero(resident & 1)) * page, array.nbytes)
    return total


def weights_bytes(folder: Path) -> int:
    """Bytes of the model's graph and weight files (``*.onnx``, ``*.onnx.data``)."""
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.is_file() and (p.name.endswith(".onnx") or p.name.endswith(".onnx.data")))


@dataclass(frozen=True)
class EngineMemory:
    """The engine's memory now and its budget, in bytes (None: not measurable here).

    ``budget_bytes`` = ``start_rss_bytes`` (weights and runtime, at load) + the batch
    buffer's ``batch_buffer_bytes`` (every row it may touch) + ``host_pool_bytes``; RSS
    above it means something the budget does not know of grows.
    """

    rss_bytes: int | None
    start_rss_bytes: int | None
    weights_bytes: int
    batch_buffer_bytes: int  # allocated: rows x ctx x bytes per token (virtual until used)
    batch_buffer_resident_bytes: int | None
    batch_rows: int
    parked_kv_bytes: int
    host_pool_bytes: int
    machine_total_bytes: int | None
    machine_available_bytes: int | None

    @property
    def budget_bytes(self) -> int | None:
        if self.start_rss_bytes is None:
            return None
        return self.start_rss_bytes + self.batch_buffer_bytes + self.host_pool_bytes

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["budget_bytes"] = self.budget_bytes
        return body


def engine_memory(*, start_rss: int | None, weights: int, batch: Iterable[np.ndarray],
                  rows: int, parked_kv: int, host_pool: int,
                  info: MemInfo | None = None) -> EngineMemory:
    """Reads what the engine holds now (RSS, resident batch pages) into an EngineMemory."""
    arrays = list(batch)
    info = machine_memory() if info is None else info
    return EngineMemory(
        rss_bytes=process_rss_bytes(), start_rss_bytes=start_rss, weights_bytes=weights,
        batch_buffer_bytes=sum(a.nbytes for a in arrays),
        batch_buffer_resident_bytes=resident_bytes(arrays), batch_rows=rows,
        parked_kv_bytes=parked_kv, host_pool_bytes=host_pool,
        machine_total_bytes=info.total if info else None,
        machine_available_bytes=info.available if info else None)
