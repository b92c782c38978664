"""The fail-safe: any control-plane failure turns the proxy into pure passthrough.

Trips come from four places: an exception in a control loop, a stale controller (no
heartbeat for ``stale_after_s``), an invalid policy snapshot, a failed actuator (or a
managed backend that died). ``trip`` is a few attribute writes, safe from any thread, and
records how long it took from the fault to passthrough. The watchdog runs on the *data
plane's* event loop, so it keeps working when the controller's thread hangs; it also ends
passthrough once the controller has been healthy (fresh heartbeats, no new fault) for
``recover_after_s``. A user's own passthrough switch is separate and never cleared here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from inferos.proxy.mode import ProxyMode

log = logging.getLogger(__name__)
TRIP_REASONS = ("exception", "stale", "snapshot", "actuator", "backend")
TRIP_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class FailsafeSettings:
    # The seed allows 1 s. A hang is dated from the last heartbeat, so this bound is most of
    # the hang-to-passthrough time; 80 ms met the 100 ms target but tripped falsely when a
    # loaded two-core machine starved the controller's thread for ~95 ms (seen in CI).
    stale_after_s: float = 0.25
    watch_period_s: float = 0.02
    recover_after_s: float = 5.0


class FailSafe:
    def __init__(self, mode: ProxyMode, settings: FailsafeSettings, registry: CollectorRegistry,
                 on_event: Callable[..., object] | None = None) -> None:
        self.mode = mode
        self.settings = settings
        self.heartbeat_at = time.monotonic()
        self.last_fault_at: float | None = None
        self.last_trip_latency_s: float | None = None
        self.trips = 0
        self._on_event = on_event
        self.failovers = Counter("inferos_failovers", "Fail-safe trips to passthrough",
                                 ("reason",), registry=registry)
        for reason in TRIP_REASONS:  # exported as 0 from the start, so rates are defined
            self.failovers.labels(reason)
        self.trip_latency = Histogram(
            "inferos_failsafe_trip_latency_seconds", "Time from a fault to passthrough",
            registry=registry, buckets=TRIP_BUCKETS)

    def heartbeat(self) -> None:
        self.heartbeat_at = time.monotonic()

    def trip(self, reason: str, kind: str, fault_at: float | None = None) -> None:
        """Passthrough now. ``fault_at`` (monotonic) is when the fault happened, if known."""
        now = time.monotonic()
        fault_at = now if fault_at is None else fault_at
        was_tripped = self.mode.failsafe_reason is not None
        self.mode.trip(reason)
        self.last_fault_at = now
        if was_tripped:
            return
        self.trips += 1
        self.last_trip_latency_s = now - fault_at
        self.failovers.labels(kind).inc()
        self.trip_latency.observe(self.last_trip_latency_s)
        log.error("fail-safe: passthrough (%s), %.1f ms after the fault", reason,
                  self.last_trip_latency_s * 1000)
        self._emit("failover", reason=reason, cause=kind,
                   fault_to_passthrough_ms=round(self.last_trip_latency_s * 1000, 3))

    def _emit(self, kind: str, **fields: object) -> None:
        # Passthrough is already in force; failing to record it must not undo anything.
        if self._on_event is None:
            return
        try:
            self._on_event(kind, **fields)
        except Exception:
            log.exception("could not record the %s event", kind)

    def check(self) -> None:
        """One watchdog tick (data-plane loop)."""
        now = time.monotonic()
        stale_for = now - self.heartbeat_at
        if stale_for > self.settings.stale_after_s:
            self.trip(f"controller stale: no heartbeat for {stale_for * 1000:.0f} ms",
                      "stale", fault_at=self.heartbeat_at)
        elif (self.mode.failsafe_reason is not None and self.last_fault_at is not None
              and now - self.last_fault_at >= self.settings.recover_after_s):
            reason = self.mode.failsafe_reason
            self.mode.clear()
            log.warning("fail-safe: controller healthy again; leaving passthrough")
            self._emit("recovered", after=reason)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_period_s)
            self.check()
