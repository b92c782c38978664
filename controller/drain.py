"""Waiting, bounded, for the requests running against one upstream to finish."""

from __future__ import annotations

import asyncio
import time

from inferos.proxy.data_plane import DataPlane


async def drain(plane: DataPlane, upstream: str, timeout_s: float, *,
                generation_only: bool = True, poll_s: float = 0.02) -> bool:
    """True when nothing (by default: no generation) runs against ``upstream``; False at
    the timeout. Health, halt and other short requests never hold a drain back."""
    deadline = time.monotonic() + timeout_s
    while plane.in_flight(upstream, generation=generation_only) > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
