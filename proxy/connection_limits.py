"""Bounds on the clients' connections to one listener: how long a request head may take,
how long an idle kept-alive connection stays, and how many connections are open at once.

- **Header timeout** (``header_timeout_s``, 10 s). A connection must deliver a complete
  request head (request line and headers) within this time of opening, or of its first
  byte after a response when kept alive; otherwise it gets a ``408`` in OpenAI's shape and
  is closed. The deadline is fixed when it is armed: bytes trickling in do not extend it,
  which is the whole point against slowloris. aiohttp has no such timer: its only one is
  ``keepalive_timeout``, which alone would hold a slowloris for the whole keep-alive bound.
- **Idle keep-alive** (``keepalive_timeout_s``, 75 s): aiohttp's own ``keepalive_timeout``.
  It closes a connection that has no request in progress that long after its last response
  (or its opening); a connection that never completes a head is closed by the header
  timeout first. 75 s is nginx's default, and longer than the keep-alive of the clients in
  front of us (the OpenAI SDK's httpx keeps 5 s, aiohttp's client 15 s), so a client
  normally closes first and never races our close with its next request.
- **Cap** (``max_connections``, 1024, per listener): a connection past it is answered
  ``503`` with ``Retry-After`` and closed; refusals are counted and logged at most once per
  ``LOG_EVERY_S``. Each listener counts on its own, so a flood of the proxy port leaves the
  admin port (health, metrics) reachable.

Neither timer runs while a request is being handled: a generation streaming for an hour is
never cut here (the upstream's own timeouts apply to it). Known limits: a request *body*
is not timed here (the proxy streams it to the backend), and the head of a request
pipelined behind one still running is bounded by the keep-alive timeout, not the header
timeout. The aiohttp internals read here (``_request_count``, ``_waiter``, ``_kwargs``)
are pinned by ``tests/proxy/test_connection_limits.py`` against the installed version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

# The runner and handler that answer parser errors in OpenAI's shape; the guarded ones
# extend them, so a listener gets both (aiohttp builds one handler class per connection).
from inferos.protocol_errors import OpenAIErrorRunner
from inferos.protocol_errors import _OpenAIErrorHandler as OpenAIErrorHandler

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0
DEFAULT_MAX_CONNECTIONS = 1024
LOG_EVERY_S = 10.0
# A refused connection stays this long at most, so that the client can read its 503
# before the close (closing with its request unread would reset the connection instead).
REFUSED_LINGER_S = 1.0
REFUSED_RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S   # None: no header timeout
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS      # None: no cap

    def __post_init__(self) -> None:
        if self.header_timeout_s is not None and self.header_timeout_s <= 0:
            raise ValueError("header_timeout_s must be above 0")
        if self.keepalive_timeout_s <= 0:
            raise ValueError("keepalive_timeout_s must be above 0")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _raw_response(status: int, reason: str, code: str, message: str,
                  extra_headers: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": code, "param": None,
                                 "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n")
    return head.encode("ascii") + body


class ConnectionMetrics:
    """The listeners' connection series, on the injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge("inferos_connections_open", "Client connections open now",
                          ("listener",), registry=registry)
        self.refused = Counter("inferos_connections_refused",
                               "Connections refused because the listener's cap was reached",
                               ("listener",), registry=registry)
        self.header_timeouts = Counter(
            "inferos_connections_header_timeouts",
            "Connections closed because their request head was not complete in time",
            ("listener",), registry=registry)


class ListenerGuard:
    """One listener's count of open connections, its cap and its log lines. Used on the
    listener's event loop only."""

    def __init__(self, name: str, settings: ConnectionSettings,
                 metrics: ConnectionMetrics | None = None) -> None:
        self.name = name
        self.settings = settings
        self.open = 0
        self.refused = 0
        self.header_timeouts = 0
        self._open_gauge = metrics.open.labels(name) if metrics else None
        self._refused_counter = metrics.refused.labels(name) if metrics else None
        self._timeouts_counter = metrics.header_timeouts.labels(name) if metrics else None
        self._refused_logged = 0
        self._refused_log_at = float("-inf")
        self._timeouts_logged = 0
        self._timeouts_log_at = float("-inf")
        limit = settings.header_timeout_s
        self.timeout_response = _raw_response(
            408, "Request Timeout", "request_timeout",
            f"The request head was not complete within {limit} s.")
        self.refused_response = _raw_response(
            503, "Service Unavailable", "too_many_connections",
            f"The {name} listener has {settings.max_connections} connections open, its cap.",
            f"Retry-After: {REFUSED_RETRY_AFTER_S}\r\n")

    def admit(self) -> bool:
        cap = self.settings.max_connections
        if cap is not None and self.open >= cap:
            self.refused += 1
            if self._refused_counter is not None:
                self._refused_counter.inc()
            now = time.monotonic()
            if now - self._refused_log_at >= LOG_EVERY_S:
                log.warning("%s listener: %d connections open, its cap (max_connections); "
                            "refused %d new connections since the last message",
                            self.name, self.open, self.refused - self._refused_logged)
                self._refused_log_at, self._refused_logged = now, self.refused
            return False
        self.open += 1
        if self._open_gauge is not None:
            self._open_gauge.inc()
        return True

    def release(self) -> None:
        self.open -= 1
        if self._open_gauge is not None:
            self._open_gauge.dec()

    def header_timed_out(self) -> None:
        self.header_timeouts += 1
        if self._timeouts_counter is not None:
            self._timeouts_counter.inc()
        now = time.monotonic()
        if now - self._timeouts_log_at >= LOG_EVERY_S:
            log.info("%s listener: closed %d connections whose request head took longer "
                     "than %s s (header_timeout_s)", self.name,
                     self.header_timeouts - self._timeouts_logged,
                     self.settings.header_timeout_s)
            self._timeouts_log_at, self._timeouts_logged = now, self.header_timeouts


class GuardedRequestHandler(OpenAIErrorHandler):
    """aiohttp's connection handler, with the cap and the header timeout (and parser
    errors in OpenAI's shape)."""

    __slots__ = ("_guard", "_head_deadline", "_admitted", "_refused", "_refused_close")

    def __init__(self, manager: web.Server, *, guard: ListenerGuard,
                 loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._head_deadline: asyncio.TimerHandle | None = None
        self._admitted = False
        self._refused: asyncio.Transport | None = None
        self._refused_close: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            self._refuse(transport)
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_deadline()  # the first head is timed from the connection's opening

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._guard.refused_response)
        if transport.can_write_eof():
            transport.write_eof()  # then wait for the client's close, bounded
        self._refused = transport
        self._refused_close = self._loop.call_later(REFUSED_LINGER_S, transport.abort)

    def _refused_transport_close(self) -> None:
        if self._refused is not None:
            self._refused.close()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # a refused connection: its request is read and dropped
        # Bytes arriving while no request is in progress start a head; a head that
        # completes in the same read (the usual case) never arms a timer at all.
        starts_head = (data != b"" and self._head_deadline is None
                       and self._waiter is not None and not self._waiter.done())
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm_head_deadline()
        elif starts_head:
            self._arm_head_deadline()

    def eof_received(self) -> None:
        if self._refused_close is not None:
            self._refused_close.cancel()  # the refused client closed: close our side now
            self._refused_close = self._loop.call_soon(self._refused_transport_close)
            return
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head_deadline()
        if self._refused_close is not None:
            self._refused_close.cancel()
            self._refused_close = None
        self._refused = None
        super().connection_lost(exc)
        if self._admitted:
            self._admitted = False
            self._guard.release()

    def _arm_head_deadline(self) -> None:
        limit = self._guard.settings.header_timeout_s
        if limit is not None and self._head_deadline is None:
            self._head_deadline = self._loop.call_later(limit, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        self._guard.header_timed_out()
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._guard.timeout_response)
        self.force_close()  # flushes the 408, then closes


class GuardedServer(web.Server):
    """An aiohttp ``Server`` whose connections are ``GuardedRequestHandler``s."""

    def __init__(self, made: web.Server, guard: ListenerGuard) -> None:
        # The kwargs aiohttp gathered for its handlers (the runner's, the app's
        # handler_args, debug, access log class) are reused as they are.
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation, loop=made._loop,
                         **made._kwargs)
        self.guard = guard

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class GuardedAppRunner(OpenAIErrorRunner):
    """``web.AppRunner`` for a listener with these connection bounds (and parser errors in
    OpenAI's shape). Use it as an ``AppRunner``: ``setup()``, a ``TCPSite``, ``cleanup()``."""

    def __init__(self, app: web.Application, guard: ListenerGuard, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", guard.settings.keepalive_timeout_s)
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.guard)
