"""The proxy's aiohttp application: one catch-all route, one long-lived upstream session.

Per request the handler reads the data plane's snapshot once (upstream, passthrough,
gates, limit). Passthrough forwards at once, observing and parsing nothing. Otherwise a
generation request may wait, bounded, at a gate that a reloading backend closed for its
model, or for a slot under load shedding; every other route (health, halt, stats, models,
load, unload, ...) is never held. Only while a gate is closed does the proxy read a
generation request's body before forwarding it, to learn which model it names.

Before any of that, in every mode (passthrough included: it forwards what it may forward),
two guards answer on their own: a ``Host`` that is not this machine's (``host_guard.py``,
DNS rebinding) and a path of ``proxy.deny_paths`` (``deny_paths.py``) get a 403.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from inferos.proxy import errors
from inferos.proxy.bounded_json import read_json_object
from inferos.proxy.data_plane import DataPlane, GateTimeout
from inferos.proxy.deny_paths import PathDenyList, path_denied
from inferos.proxy.forward import forward
from inferos.proxy.host_guard import HostAllowList, forbidden_host
from inferos.proxy.observer import Observer
from inferos.proxy.routes import is_generation, route_label
from inferos.proxy.settings import ProxySettings
from inferos.proxy.websocket import is_websocket, relay_websocket


@dataclass
class ProxyRuntime:
    """What the data plane shares across requests: its settings, its seam (``data_plane``,
    the only way anything else changes the proxy) and its upstream session."""

    settings: ProxySettings
    observer: Observer
    data_plane: DataPlane = field(init=False)
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    hosts: HostAllowList = field(init=False)
    denied: PathDenyList = field(init=False)

    def __post_init__(self) -> None:
        self.data_plane = DataPlane(self.settings.upstream,
                                    forced_passthrough=self.settings.passthrough)
        self.hosts = HostAllowList.for_listener(self.settings.listen.host,
                                                self.settings.allowed_hosts)
        self.denied = PathDenyList.of(self.settings.deny_paths)

    @property
    def upstream(self) -> str:
        return self.data_plane.upstream

    @property
    def in_flight(self) -> int:
        return self.data_plane.in_flight()


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
    runtime.data_plane.bind(asyncio.get_running_loop())
    runtime.session = _client_session(runtime.settings)
    yield
    await runtime.session.close()
    runtime.session = None


def model_named(body: bytes) -> str | None:
    """The ``model`` a JSON request body names; None when it names none, is not JSON or
    too costly to parse (the backend will answer that one: it is forwarded as sent)."""
    value = read_json_object(body)
    model = value.get("model") if value is not None else None
    return model if isinstance(model, str) else None


async def _handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    host = request.headers.get("Host")
    if not runtime.hosts.allows(host):
        return forbidden_host(host or "")
    # rel_url: the path of an absolute-form target too (`GET http://host/internal/set`).
    if runtime.denied.denies(request.rel_url.raw_path):
        return path_denied(request.rel_url.path)
    session = runtime.session
    assert session is not None
    plane = runtime.data_plane
    snapshot = plane.snapshot  # read once: this request never sees half a change
    if is_websocket(request):
        return await relay_websocket(request, session, snapshot.upstream)
    if snapshot.passthrough:
        with plane.running(snapshot.upstream, generation=False, admitted=False):
            return await forward(request, settings=runtime.settings, session=session,
                                 observer=None, upstream=snapshot.upstream)
    route = route_label(request.path)
    generation = is_generation(route)
    body: bytes | None = None
    admitted = False
    if generation and (snapshot.gates or snapshot.limit is not None):
        model = None
        if snapshot.gates_route(route):
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return errors.body_too_large(runtime.settings.max_body_bytes, None)
            model = model_named(body)
        try:
            await plane.admit(route, model, generation)
        except GateTimeout as exc:
            answer = (errors.backend_unresponsive if exc.gate.code == "backend_unresponsive"
                      else errors.backend_reloading)
            return answer(exc.gate.reason, max(1, math.ceil(exc.gate.max_wait_s / 4)), None)
        admitted = True
        # After a wait the reload may have moved the backend (blue/green): this request
        # starts now, on the snapshot in force now.
        snapshot = plane.snapshot
    upstream = snapshot.upstream
    with plane.running(upstream, generation=generation, admitted=admitted):
        return await forward(request, settings=runtime.settings, session=session,
                             observer=runtime.observer, upstream=upstream,
                             facts=plane.facts if plane.collect_facts else None,
                             in_flight=plane.in_flight(), body=body)


def build_proxy_app(runtime: ProxyRuntime) -> web.Application:
    # client_max_size only limits request.read(); bodies are streamed and limited in forward.
    app = web.Application(client_max_size=runtime.settings.max_body_bytes,
                          middlewares=[errors.unroutable_targets])
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app
