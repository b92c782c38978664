"""The time this process has spent in Python's garbage collector, for the fail-safe.

A full (generation 2) collection stops every thread of the process while it runs, in
whichever thread happened to allocate past the threshold. Measured in the test suite's
process (tens of thousands of live objects): 40-180 ms per full collection, one of 98 ms
in the controller's thread, where the fail-safe saw "no heartbeat for 145 ms (its thread
ran 145 ms)" and tripped (stale_after_s is 75 ms). Such a pause is the whole process
pausing, not the controller hanging, so the fail-safe excuses it as it excuses a stopped
or starved process (failsafe.py, within starved_limit_s).

``GcClock`` adds up the collector's own time through ``gc.callbacks``: a start and a stop
call per collection, cheap beside the collection itself. Collections do not overlap (each
runs holding the GIL), so one start time is enough. ``start``/``stop`` register and
remove the callback; the fail-safe's watchdog does both, around its own life.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcClock:
    def __init__(self) -> None:
        self.total_s = 0.0  # seconds in collections since start(), cumulative
        self._began: float | None = None
        self._running = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.total_s += time.perf_counter() - self._began
            self._began = None

    def start(self) -> None:
        if not self._running:
            gc.callbacks.append(self._on_gc)
            self._running = True

    def stop(self) -> None:
        if self._running:
            gc.callbacks.remove(self._on_gc)
            self._running = False
            self._began = None
