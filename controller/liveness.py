"""The backend's liveness probe: is the backend answering at all?

A backend that is stopped (SIGSTOP), deadlocked or swapped out still accepts connections
(the kernel completes the handshake), so a request sent to it waits in silence, up to the
upstream's idle timeout (600 s). The probe GETs the backend's health every ``interval_s``
with a ``timeout_s`` bound. Any HTTP answer counts as alive: a 401 or a 404 from a backend
with another health route still proves that its server runs. ``failures`` probes in a row
without an answer mark the backend **unresponsive** (two by default: one late answer on a
loaded machine is not an outage; with 1 s and 2 s that is about 4 s). Then:

- ``/v1/health`` says ``degraded`` with ``backend_liveness.state: unresponsive``; the
  metrics ``inferos_backend_up`` (0) and ``inferos_backend_state`` say so too;
- the data plane closes a gate for generation requests: a new generation waits up to
  ``wait_s`` for the backend to come back, then gets a 503 ``backend_unresponsive`` with
  ``Retry-After``. Other routes pass (health, models, stats answer or time out as they
  would). Requests already running, streaming or not, are never touched;
- one ``backend_unresponsive`` event and log line; at the first answer again the gate
  opens, and ``backend_recovered`` (with how long it was out) is logged and recorded.

A refused connection (nothing listens: a backend that exited or is not started yet) is
**unreachable**: reported, but not gated, since a request fails at once with a 502 there,
and a managed backend that died is restarted by the controller meanwhile.

Decided: the probe never trips the fail-safe. The fail-safe guards against a faulty
*controller*; passthrough to a frozen backend helps nobody, and it would bypass the gate
that gives clients a clear answer. In passthrough (the user's switch or the fail-safe's)
requests are forwarded as sent and the gate is not consulted; health still reports the
state. The probe runs as one task on the controller's loop, started and stopped with its
other tasks; it is not a ``ControlLoop``, whose failing ticks trip the fail-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge

from inferos.proxy.data_plane import DataPlane, Gate

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_FAILURES = 2
DEFAULT_WAIT_S = 10.0
# Lemonade's health route; the embedded engine serves it too. llama.cpp's server answers
# it with a 404, which is an answer.
HEALTH_PATH = "/api/v1/health"
GATE_CODE = "backend_unresponsive"

UNKNOWN = "unknown"            # not probed yet
UP = "up"
UNRESPONSIVE = "unresponsive"  # connects, but does not answer in time
UNREACHABLE = "unreachable"    # refuses the connection
STATES = (UNKNOWN, UP, UNRESPONSIVE, UNREACHABLE)


@dataclass(frozen=True, slots=True)
class LivenessSettings:
    interval_s: float | None = DEFAULT_INTERVAL_S  # None: no probe
    timeout_s: float = DEFAULT_TIMEOUT_S
    failures: int = DEFAULT_FAILURES
    wait_s: float = DEFAULT_WAIT_S


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answered: bool
    refused: bool = False         # the connection was refused (nothing listens)
    latency_s: float | None = None
    detail: str = ""


async def probe(client: httpx.AsyncClient, upstream: str, timeout_s: float) -> ProbeResult:
    started = time.monotonic()
    try:
        response = await client.get(upstream + HEALTH_PATH, timeout=timeout_s)
    except httpx.TimeoutException:
        return ProbeResult(False, detail=f"no answer within {timeout_s} s")
    except httpx.ConnectError as exc:
        return ProbeResult(False, refused=True, detail=f"connection failed: {exc}"[:200])
    except httpx.HTTPError as exc:  # closed or garbled: its server is not serving
        return ProbeResult(False, detail=f"{type(exc).__name__}: {exc}"[:200])
    return ProbeResult(True, latency_s=time.monotonic() - started,
                       detail=f"HTTP {response.status_code}")


class BackendLiveness:
    """The probe's state and its effects (gate, metrics, events). ``observe`` is the rule,
    fed one probe result at a time; ``run`` is the probing task."""

    def __init__(self, plane: DataPlane, settings: LivenessSettings,
                 registry: CollectorRegistry, event: Callable[..., Any], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plane = plane
        self.settings = settings
        self._event = event
        self._clock = clock
        self.state = UNKNOWN
        self.since = clock()
        self.failures = 0
        self.probes = 0
        self.outages = 0
        self.last_answer_at: float | None = None
        self.last_latency_s: float | None = None
        self.last_detail = ""
        self.upstream: str | None = None
        self._gate: Gate | None = None
        self._up = Gauge("inferos_backend_up",
                         "1 while the backend answers its liveness probe", registry=registry)
        self._up.set_function(lambda: 1.0 if self.state == UP else 0.0)
        self._state = Enum("inferos_backend_state", "The backend's liveness as probed",
                           states=list(STATES), registry=registry)
        self._outages = Counter("inferos_backend_unresponsive",
                                "Times the backend was marked unresponsive", registry=registry)

    # -- the rule -----------------------------------------------------------------------
    def observe(self, result: ProbeResult, upstream: str) -> None:
        self.probes += 1
        self.upstream = upstream
        self.last_detail = result.detail
        if result.answered:
            self.failures = 0
            self.last_answer_at = self._clock()
            self.last_latency_s = result.latency_s
            self._enter(UP, result)
            return
        self.failures += 1
        if self.failures >= self.settings.failures:
            self._enter(UNREACHABLE if result.refused else UNRESPONSIVE, result)

    def _enter(self, state: str, result: ProbeResult) -> None:
        previous = self.state
        if state == previous:
            return
        now = self._clock()
        out_s = round(now - self.since, 3)
        self.state, self.since = state, now
        self._state.state(state)
        if state == UNRESPONSIVE:
            self.outages += 1
            self._outages.inc()
            self._gate = self.plane.close_gate(
                None, f"no answer from {self.upstream} to its health probe",
                max_wait_s=self.settings.wait_s, code=GATE_CODE)
            log.warning("backend %s unresponsive: %s (%d probes in a row); new generations "
                        "wait up to %s s for it", self.upstream, result.detail,
                        self.failures, self.settings.wait_s)
            self._event("backend_unresponsive", upstream=self.upstream,
                        failures=self.failures, detail=result.detail)
            return
        self._open_gate()
        if previous in (UNRESPONSIVE, UNREACHABLE) and state == UP:
            log.warning("backend %s answers again after %.1f s %s", self.upstream, out_s,
                        previous)
            self._event("backend_recovered", upstream=self.upstream, was=previous,
                        out_s=out_s)
        elif state == UNREACHABLE:
            log.warning("backend %s unreachable: %s", self.upstream, result.detail)
            self._event("backend_unreachable", upstream=self.upstream, detail=result.detail)

    def _open_gate(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            self.plane.open_gate(gate)

    # -- the task -------------------------------------------------------------------------
    async def run(self) -> None:
        """Probes until cancelled; leaves no gate closed behind it."""
        interval = self.settings.interval_s
        if interval is None:
            return
        # No kept-alive connection: each probe is a fresh loopback connect, so a socket the
        # backend closed while idle can never pass for an outage.
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
                while True:
                    started = self._clock()
                    upstream = self.plane.upstream
                    try:
                        result = await probe(client, upstream, self.settings.timeout_s)
                        self.observe(result, upstream)
                    except Exception:  # the probe must never end, nor trip anything
                        log.exception("backend liveness probe failed")
                    await asyncio.sleep(max(0.0, interval - (self._clock() - started)))
        finally:
            self._open_gate()

    def as_dict(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "state": self.state,
            "since_s": round(now - self.since, 1),
            "upstream": self.upstream,
            "failures_in_a_row": self.failures,
            "probes": self.probes,
            "outages": self.outages,
            "last_answer_s_ago": None if self.last_answer_at is None
            else round(now - self.last_answer_at, 1),
            "last_latency_ms": None if self.last_latency_s is None
            else round(self.last_latency_s * 1000, 1),
            "last_probe": self.last_detail,
            "settings": {"interval_s": self.settings.interval_s,
                         "timeout_s": self.settings.timeout_s,
                         "failures": self.settings.failures, "wait_s": self.settings.wait_s},
        }
