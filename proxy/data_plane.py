"""The data plane's seam: the one interface through which anything outside the proxy changes
what the proxy does, and the immutable snapshot that each request reads once.

``DataPlane`` is owned by the proxy and is the only writer of its own state. The controller
(on its own thread) and the fail-safe (on the proxy's loop) call its methods:

- ``switch_upstream(url)``: new requests go there (blue/green);
- ``close_gate(model, routes)`` / ``open_gate(gate)``: while a backend reloads a model,
  *generation* requests for that model wait (bounded); nothing else does — health, halt,
  stats, models, system-info, load and unload pass straight through;
- ``set_limit(n)``: at most n generations at once (load shedding);
- ``set_passthrough(on)`` (the user's switch) and ``trip(reason)`` / ``clear_failsafe()``
  (the fail-safe): forward only, observe nothing;
- ``in_flight(...)``: counts, for draining; ``take_facts()``: the request facts posted
  since the last call.

Each writer builds a new ``DataPlaneSnapshot`` and swaps it in whole under a lock (writers
only); a request reads ``snapshot`` once, at its start, without a lock, so it never sees
half a change. Waiters are woken on the proxy's loop through ``call_soon_threadsafe``.
A wait that outlasts its gate's bound ends in ``GateTimeout``; the proxy answers it with an
OpenAI-shaped 503 and ``Retry-After`` rather than sending a request into a reloading server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from inferos.proxy.pending_context import PendingContexts, RequestFacts
from inferos.proxy.routes import GENERATION

DEFAULT_GATE_WAIT_S = 60.0


class GateTimeout(Exception):
    """A request waited for a closed gate longer than its bound."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(gate.reason)
        self.gate = gate


@dataclass(frozen=True, slots=True, eq=False)
class Gate:
    """Generation requests on ``routes`` for ``model`` (None: any model) wait while it is
    closed. Identity matters (``eq=False``): two reloads close two gates."""

    model: str | None
    routes: frozenset[str]
    reason: str
    max_wait_s: float
    closed_at: float = field(default_factory=time.monotonic)
    # The error code of the 503 a request gets past the wait: a reload, or a backend that
    # stopped answering (controller/liveness.py).
    code: str = "backend_reloading"

    def holds(self, route: str, model: str | None) -> bool:
        if route not in self.routes:
            return False
        # A request that names no model goes to the loaded one, which is what reloads.
        return self.model is None or model is None or model == self.model


@dataclass(frozen=True, slots=True)
class DataPlaneSnapshot:
    version: int
    upstream: str
    forced_passthrough: bool = False
    failsafe_reason: str | None = None
    failsafe_since: float | None = None
    gates: tuple[Gate, ...] = ()
    limit: int | None = None

    @property
    def passthrough(self) -> bool:
        return self.forced_passthrough or self.failsafe_reason is not None

    def describe(self) -> str:
        if self.forced_passthrough:
            return "passthrough"
        if self.failsafe_reason is not None:
            return "failsafe"
        return "observe"

    def gate_for(self, route: str, model: str | None) -> Gate | None:
        for gate in self.gates:
            if gate.holds(route, model):
                return gate
        return None

    def gates_route(self, route: str) -> bool:
        return any(route in gate.routes for gate in self.gates)


class DataPlane:
    def __init__(self, upstream: str, *, forced_passthrough: bool = False) -> None:
        self._snapshot = DataPlaneSnapshot(1, upstream, forced_passthrough=forced_passthrough)
        self._write = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._in_flight: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self.active_generations = 0
        self.facts = PendingContexts()
        self.collect_facts = False  # set when a controller runs and drains them
        self.waited = 0
        self.wait_timeouts = 0

    # -- reading ------------------------------------------------------------------------
    @property
    def snapshot(self) -> DataPlaneSnapshot:
        return self._snapshot

    @property
    def upstream(self) -> str:
        return self._snapshot.upstream

    def in_flight(self, upstream: str | None = None, *, generation: bool = False) -> int:
        counts = self._generations if generation else self._in_flight
        if upstream is None:
            return sum(counts.values())
        return counts.get(upstream, 0)

    def take_facts(self) -> list[RequestFacts]:
        return self.facts.drain()

    # -- writing (any thread) -------------------------------------------------------------
    def _publish(self, **changes: object) -> DataPlaneSnapshot:
        with self._write:
            current = self._snapshot
            new = replace(current, version=current.version + 1, **changes)  # type: ignore[arg-type]
            self._snapshot = new
        self._notify()
        return new

    def switch_upstream(self, url: str) -> None:
        if url != self._snapshot.upstream:
            self._publish(upstream=url)

    def close_gate(self, model: str | None, reason: str, *,
                   routes: frozenset[str] = GENERATION,
                   max_wait_s: float = DEFAULT_GATE_WAIT_S,
                   code: str = "backend_reloading") -> Gate:
        gate = Gate(model, routes, reason, max_wait_s, code=code)
        with self._write:
            current = self._snapshot
            self._snapshot = replace(current, version=current.version + 1,
                                     gates=(*current.gates, gate))
        self._notify()
        return gate

    def open_gate(self, gate: Gate) -> None:
        with self._write:
            current = self._snapshot
            if gate not in current.gates:
                return
            self._snapshot = replace(current, version=current.version + 1,
                                     gates=tuple(g for g in current.gates if g is not gate))
        self._notify()

    def set_limit(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("a concurrency limit is at least 1")
        if limit != self._snapshot.limit:
            self._publish(limit=limit)

    def set_passthrough(self, on: bool) -> None:
        """The user's switch (flag, environment, ``POST /v1/policy {"mode": ...}``)."""
        if on != self._snapshot.forced_passthrough:
            self._publish(forced_passthrough=on)

    def trip(self, reason: str) -> bool:
        """The fail-safe's switch; True when this call turned passthrough on."""
        with self._write:
            current = self._snapshot
            first = current.failsafe_reason is None
            self._snapshot = replace(
                current, version=current.version + 1, failsafe_reason=reason,
                failsafe_since=time.monotonic() if first else current.failsafe_since)
        self._notify()
        return first

    def clear_failsafe(self) -> None:
        if self._snapshot.failsafe_reason is not None:
            self._publish(failsafe_reason=None, failsafe_since=None)

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop stopping: nobody waits any more
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        if event is not None:
            event.set()

    # -- the proxy's side (its event loop only) ------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    async def admit(self, route: str, model: str | None, generation: bool) -> None:
        """Waits while a gate holds this request or the concurrency limit is reached.
        Raises ``GateTimeout`` past the gate's bound; a limit wait is bounded the same way
        and then lets the request through (load shedding slows, it never refuses)."""
        started: float | None = None
        while True:
            snapshot = self._snapshot
            gate = snapshot.gate_for(route, model) if generation else None
            full = (generation and snapshot.limit is not None
                    and self.active_generations >= snapshot.limit)
            if gate is None and not full:
                break
            now = time.monotonic()
            if started is None:
                started = now
                self.waited += 1
            bound = gate.max_wait_s if gate is not None else DEFAULT_GATE_WAIT_S
            remaining = started + bound - now
            if remaining <= 0:
                self.wait_timeouts += 1
                if gate is not None:
                    raise GateTimeout(gate)
                break
            changed = self._changed
            assert changed is not None, "DataPlane.bind() was not called"
            with contextlib.suppress(TimeoutError):
                # Woken by any change; re-checked above. The cap keeps a lost wake-up cheap.
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
        if generation:
            self.active_generations += 1

    @contextlib.contextmanager
    def running(self, upstream: str, generation: bool, admitted: bool) -> Iterator[None]:
        """Counts a request in flight against ``upstream`` while it runs."""
        self._in_flight[upstream] = self._in_flight.get(upstream, 0) + 1
        if generation:
            self._generations[upstream] = self._generations.get(upstream, 0) + 1
        try:
            yield
        finally:
            self._in_flight[upstream] -= 1
            if generation:
                self._generations[upstream] -= 1
            if admitted and generation:
                self.active_generations -= 1
                if self._snapshot.limit is not None:
                    self._wake()
