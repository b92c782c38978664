"""Load shedding: on a temperature excursion (where sensors exist) or memory pressure, at
most half the generations running now (at least one) are admitted at once; the limit is
lifted after ``unshed_after_s`` of normal readings. Requests over it wait, bounded, at the
data plane; none is refused for it."""

from __future__ import annotations

import time
from collections.abc import Callable

from inferos.controller.controller_metrics import ControllerMetrics
from inferos.controller.system_sample import SystemSample
from inferos.proxy.data_plane import DataPlane


class LoadShedder:
    def __init__(self, plane: DataPlane, metrics: ControllerMetrics,
                 event: Callable[..., None], unshed_after_s: float) -> None:
        self.plane = plane
        self.metrics = metrics
        self.event = event
        self.unshed_after_s = unshed_after_s
        self._normal_since: float | None = None

    def tick(self, sample: SystemSample) -> None:
        limit = self.plane.snapshot.limit
        if sample.hot or sample.memory_pressure:
            self._normal_since = None
            if limit is None:
                limit = max(1, self.plane.in_flight(generation=True) // 2)
                self.plane.set_limit(limit)
                self.metrics.load_shed.set(1)
                self.metrics.concurrency_limit.set(limit)
                self.event("shed", limit=limit, hot=sample.hot,
                           memory_pressure=sample.memory_pressure,
                           temperature_c=sample.temperature_c,
                           host_mem_percent=sample.host_mem_percent)
            return
        if limit is None:
            return
        now = time.monotonic()
        self._normal_since = self._normal_since or now
        if now - self._normal_since >= self.unshed_after_s:
            self.plane.set_limit(None)
            self.metrics.load_shed.set(0)
            self.metrics.concurrency_limit.set(0)
            self.event("unshed")
