"""The engine's memory bounds as pure functions of the machine's memory, and what the
engine measures of itself (RSS, resident pages of an np.zeros buffer as it is written)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import numpy as np
import pytest

from inferos.engine.memory_budget import (
    HOST_POOL_CAP_BYTES,
    EngineMemory,
    MemInfo,
    batch_rows,
    default_host_pool_bytes,
    parse_meminfo,
    process_rss_bytes,
    release_free_heap,
    resident_bytes,
)

GIB, MIB = 2**30, 2**20
# The head of this machine's /proc/meminfo, as the kernel writes it (kB meaning KiB).
MEMINFO = """MemTotal:       24683584 kB
MemFree:        22368944 kB
MemAvailable:   23970512 kB
Buffers:          123456 kB
"""


def test_meminfo_is_parsed_in_bytes() -> None:
    assert parse_meminfo(MEMINFO) == MemInfo(24683584 * 1024, 23970512 * 1024)
    assert parse_meminfo("MemTotal: 8 kB\n") == MemInfo(8192, None)
    assert parse_meminfo("MemFree: 100 kB\n") is None  # no total: nothing to size from
    assert parse_meminfo("MemTotal: lots kB\n") is None


@pytest.mark.parametrize(("total", "expected"), [
    (24683584 * 1024, 3013 * MIB),   # this machine: 23.5 GiB / 8, down to a MiB
    (8 * GIB, 1 * GIB),              # a laptop: an eighth
    (64 * GIB, HOST_POOL_CAP_BYTES),  # a big box: capped at the old 4 GiB default
    (256 * MIB, 64 * MIB),           # tiny: never below 64 MiB
])
def test_the_default_host_pool_is_an_eighth_of_memtotal_capped(total: int, expected: int
                                                               ) -> None:
    assert default_host_pool_bytes(MemInfo(total, total // 2)) == expected


def test_unknown_memory_keeps_the_old_default() -> None:
    assert default_host_pool_bytes(None) == HOST_POOL_CAP_BYTES == 4 * GIB


def test_batch_rows_are_bounded_by_a_quarter_of_memory() -> None:
    row = 4096 * 46_080  # one row of SmolLM2-135M at 4k context, float32: 180 MiB
    assert batch_rows(row, 16, MemInfo(24 * GIB)) == 16
    assert batch_rows(row, 16, MemInfo(8 * GIB)) == 11  # 2 GiB / 180 MiB
    assert batch_rows(8 * row, 16, MemInfo(2 * GIB)) == 1  # always one row
    assert batch_rows(row, 16, None) == 16


def test_resident_bytes_grow_as_a_zeros_buffer_is_written() -> None:
    # 64 MiB of fresh anonymous pages: np.zeros in a long-lived test process may get
    # memory malloc already holds (resident), which the engine's start-up buffer does not.
    area = mmap.mmap(-1, 64 * MIB)
    buffer = np.frombuffer(area, dtype=np.float64).reshape(64, MIB // 8)
    before = resident_bytes([buffer])
    if before is None:
        pytest.skip("mincore(2) is not available here")
    buffer[:16] = 1.0  # a quarter of it written
    after = resident_bytes([buffer])
    assert after is not None
    # 16 MiB more, give or take the transparent huge pages (2 MiB) at either end
    assert 16 * MIB <= after - before <= 20 * MIB, (before, after)
    assert after < buffer.nbytes  # the three quarters never written are not resident


def test_rss_and_the_budget() -> None:
    rss = process_rss_bytes()
    assert rss is not None and rss > 10 * MIB  # a Python with numpy loaded
    memory = EngineMemory(rss, 500 * MIB, 540 * MIB, 2 * GIB, None, 16, 0, GIB, None, None)
    assert memory.budget_bytes == 500 * MIB + 2 * GIB + GIB
    body = memory.as_dict()
    assert body["budget_bytes"] == memory.budget_bytes
    assert body["batch_buffer_resident_bytes"] is None  # not measured: null, not 0
    unknown = EngineMemory(None, None, 0, 0, None, 1, 0, GIB, None, None)
    assert unknown.budget_bytes is None


def test_freed_heap_pages_go_back_to_the_kernel() -> None:
    # What the engine's RSS kept (issue 11): blocks freed inside malloc's heap stay
    # resident. 64 MiB in 64 KiB blocks (below glibc's mmap threshold: from the heap),
    # written, then freed below a block still held, so free() itself cannot trim them.
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 * 1024
    blocks = [libc.malloc(block) for _ in range(1024)]
    pin = libc.malloc(block)
    for address in blocks:
        ctypes.memset(address, 1, block)
    for address in blocks:
        libc.free(address)
    before = process_rss_bytes()
    trimmed = release_free_heap()
    after = process_rss_bytes()
    libc.free(pin)
    if not trimmed:
        pytest.skip("no malloc_trim in this libc")
    assert before is not None and after is not None
    assert before - after >= 48 * MIB, (before, after)
