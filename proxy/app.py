"""The proxy's aiohttp application: one catch-all route, one long-lived upstream session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from inferos.proxy.admission import Admission
from inferos.proxy.forward import forward
from inferos.proxy.mode import ProxyMode
from inferos.proxy.observer import Observer
from inferos.proxy.pending_context import PendingContexts
from inferos.proxy.routes import is_generation, route_label
from inferos.proxy.settings import ProxySettings
from inferos.proxy.websocket import is_websocket, relay_websocket


@dataclass
class ProxyRuntime:
    """What the data plane shares across requests. ``upstream`` may be switched live (the
    controller's blue/green actuator swaps it); a request reads it once, at its start."""

    settings: ProxySettings
    mode: ProxyMode
    observer: Observer
    upstream: str = ""
    in_flight: int = 0
    # Requests still running against each upstream: blue/green drains the old one by this.
    in_flight_by_upstream: dict[str, int] = field(default_factory=dict)
    admission: Admission = field(default_factory=Admission)
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    # Where request facts go for the controller; None when no controller runs.
    run_contexts: PendingContexts | None = None

    def __post_init__(self) -> None:
        if not self.upstream:
            self.upstream = self.settings.upstream


RUNTIME = web.AppKey("runtime", ProxyRuntime)


def _client_session(settings: ProxySettings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=settings.total_timeout_s,
        connect=settings.connect_timeout_s,
        sock_read=settings.idle_timeout_s,
    )
    # No connection limit: the backend decides how many generations it runs at once.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # compressed bytes cross unchanged, with their header
        cookie_jar=aiohttp.DummyCookieJar(),  # never store or add cookies
        skip_auto_headers=("User-Agent",),
    )


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    runtime.admission.bind(asyncio.get_running_loop())
    runtime.session = _client_session(runtime.settings)
    yield
    await runtime.session.close()
    runtime.session = None


async def _handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    assert runtime.session is not None
    if is_websocket(request):
        return await relay_websocket(request, runtime.session, runtime.upstream)
    passthrough = runtime.mode.passthrough
    generation = False
    if not passthrough:
        generation = is_generation(route_label(request.path))
        await runtime.admission.enter(generation)
    # Read once, after any wait: a switch that happened meanwhile sends us to the new one.
    upstream = runtime.upstream
    by_upstream = runtime.in_flight_by_upstream
    by_upstream[upstream] = by_upstream.get(upstream, 0) + 1
    runtime.in_flight += 1
    try:
        return await forward(request, settings=runtime.settings, session=runtime.session,
                             observer=None if passthrough else runtime.observer,
                             upstream=upstream, run_contexts=runtime.run_contexts,
                             in_flight=runtime.in_flight)
    finally:
        runtime.in_flight -= 1
        by_upstream[upstream] -= 1
        if not passthrough:
            runtime.admission.leave(generation)


def build_proxy_app(runtime: ProxyRuntime) -> web.Application:
    # client_max_size only limits request.read(); bodies are streamed and limited in forward.
    app = web.Application(client_max_size=runtime.settings.max_body_bytes)
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app
