"""Control loops: named periodic tasks whose lateness (jitter) is measured and exported.

A tick that raises trips the fail-safe and the loop goes on, so a controller that fails
once and then works again can recover; one that keeps failing keeps the proxy in
passthrough. The trip comes first, before the log line: formatting the traceback of, say,
a RecursionError is work that could itself fail, and passthrough must not wait on it.
Any ``Exception`` counts (RecursionError and MemoryError included); only cancellation and
interpreter exits end a loop. A tick that never returns trips nothing here: the fast loop's
heartbeat stops, and the watchdog's staleness rule catches that.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Histogram

from inferos.controller.failsafe import FailSafe

log = logging.getLogger(__name__)
JITTER_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

Tick = Callable[[], Awaitable[None] | None]


class ControlLoop:
    def __init__(self, name: str, period_s: float, tick: Tick, failsafe: FailSafe,
                 jitter: Histogram) -> None:
        self.name = name
        self.period_s = period_s
        self.tick = tick
        self.failsafe = failsafe
        self.jitter = jitter.labels(name)
        self.last_jitter_s = 0.0
        self.max_jitter_s = 0.0
        self.ticks = 0
        self.errors = 0

    async def run(self) -> None:
        next_at = time.monotonic() + self.period_s
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            lateness = max(0.0, now - next_at)
            self.last_jitter_s = lateness
            self.max_jitter_s = max(self.max_jitter_s, lateness)
            self.jitter.observe(lateness)
            self.ticks += 1
            try:
                result = self.tick()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.errors += 1
                self.failsafe.trip(f"controller exception in {self.name} loop: "
                                   f"{type(exc).__name__}", "exception", fault_at=now)
                log.exception("control loop %s failed", self.name)
            next_at += self.period_s
            if next_at < time.monotonic():  # fell behind: skip the missed ticks
                next_at = time.monotonic() + self.period_s
