"""Waiting, bounded, for the requests running against one upstream to finish."""

from __future__ import annotations

import asyncio
import time

from inferos.proxy.app import ProxyRuntime


async def drain(runtime: ProxyRuntime, upstream: str, timeout_s: float,
                poll_s: float = 0.02) -> bool:
    """True when no request is in flight against ``upstream``; False at the timeout."""
    deadline = time.monotonic() + timeout_s
    while runtime.in_flight_by_upstream.get(upstream, 0) > 0:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
