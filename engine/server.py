"""The engine's HTTP server: Lemonade's API over the engine core, on one aiohttp listener.

``EngineServer`` is the one place where the listener, the model slot (its worker thread and
loaded model) and the stats live and die; ``inferos engine`` and the tests use it alike.
It binds 127.0.0.1 by default; with an API key, every route but ``live`` requires
``Authorization: Bearer <key>``. Beside Lemonade's API it serves the engine's own control
endpoint, ``/inferos/v1/policy`` (engine/policy_routes.py), for the live policy.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from inferos.engine.api_errors import ApiError, from_http_exception, unauthorized
from inferos.engine.cors import CorsPolicy
from inferos.engine.engine_policy import EnginePolicy
from inferos.engine.engine_state import ENGINE, EngineState
from inferos.engine.lemonade_routes import add_routes
from inferos.engine.model_catalog import ModelCatalog
from inferos.engine.model_slot import Loader, ModelSlot
from inferos.engine.policy_routes import add_policy_routes
from inferos.engine.runtime import EngineOptions, best_provider
from inferos.errors import ModelError
from inferos.proxy.connection_limits import ConnectionSettings, GuardedAppRunner, ListenerGuard

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8022
# Long prompts are JSON too; Lemonade sets no small limit either.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class EngineSettings:
    """``model`` is loaded at start (a catalog name or a prepared folder's path) when
    ``load_at_start``; ``options`` are the defaults of every load that names none.
    ``policy``: the live policy's start values (version 0); None takes ``options``'
    ``host_pool_bytes`` and ``kv_allow_evict`` and the kvstore's defaults for the rest.
    ``control_token``: required by the control endpoint when set."""

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    options: EngineOptions = field(default_factory=EngineOptions)
    api_key: str | None = None
    load_at_start: bool = True
    policy: EnginePolicy | None = None
    control_token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # beside loopback ones (engine/cors.py)

    def start_policy(self) -> EnginePolicy:
        if self.policy is not None:
            return self.policy
        options = self.options
        return EnginePolicy.starting(options.provider or best_provider(),
                                     host_pool_bytes=options.host_pool_bytes,
                                     allow_evict=options.kv_allow_evict)


@web.middleware
async def _errors_and_auth(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    engine = request.app[ENGINE]
    cors = request.app[CORS]
    origin = request.headers.get("Origin")
    if origin is not None and not cors.allows(origin):
        return ApiError(403, f"Origin {origin[:80]!r} may not call this engine (a web "
                             "page's request); allow it with --allowed-origins if it is "
                             "yours.", kind="permission_error",
                        code="forbidden_origin").response()
    if origin is not None and request.method == "OPTIONS" \
            and "Access-Control-Request-Method" in request.headers:
        return cors.preflight(origin)  # browsers send no API key on a preflight
    return await _answer(request, handler, engine)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response as its headers go out, streamed ones too (an SSE response is
    prepared inside its handler, before the middleware sees it again). A foreign origin
    never gets here: the middleware refused it."""
    origin = request.headers.get("Origin")
    if origin is not None and request.app[CORS].allows(origin):
        response.headers.update(request.app[CORS].headers(origin))


async def _answer(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  engine: EngineState) -> web.StreamResponse:
    try:
        if engine.api_key and not request.path.endswith("/live"):
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {engine.api_key}".encode()):
                raise unauthorized()
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(request.method, request.path, exc).response()


def _lifecycle(load_at_start: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE]
        engine.slot.start()
        try:
            if load_at_start:
                entry = engine.catalog.find(engine.default_model)
                if entry is None or not entry.prepared:
                    raise ModelError(f"model {engine.default_model!r} is not prepared; "
                                     "run `inferos model prepare` first")
                async with engine.slot.lock:
                    state, _ = await engine.slot.load(entry.id, entry.source, engine.defaults)
                log.info("loaded %s (context %d, %s)", state.name, state.ctx_size,
                         state.model.provider)
            yield
        finally:
            await engine.slot.stop()

    return lifecycle


CORS = web.AppKey("cors", CorsPolicy)


def build_engine_app(engine: EngineState, *, load_at_start: bool = True,
                     cors: CorsPolicy | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_and_auth])
    app[ENGINE] = engine
    app[CORS] = cors or CorsPolicy()
    app.on_response_prepare.append(_cors_headers)
    app.cleanup_ctx.append(_lifecycle(load_at_start))
    add_routes(app)
    add_policy_routes(app)
    return app


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound sockets only here
    assert server is not None
    sockets: list[socket.socket] = list(server.sockets)  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1])


class EngineServer:
    """Start with ``async with EngineServer(settings, catalog, loader) as server``;
    ``server.url`` is the bound origin (port 0 picks a free one)."""

    def __init__(self, settings: EngineSettings, catalog: ModelCatalog, loader: Loader) -> None:
        self.settings = settings
        self.state = EngineState(catalog=catalog,
                                 slot=ModelSlot(loader, settings.start_policy()),
                                 defaults=settings.options, default_model=settings.model,
                                 api_key=settings.api_key,
                                 control_token=settings.control_token)
        self.app = build_engine_app(self.state, load_at_start=settings.load_at_start,
                                    cors=CorsPolicy.of(settings.allowed_origins))
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    async def start(self) -> None:
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # stops its generation and returns its KV buffer.
        # OpenAIErrorRunner: HTTP the parser refuses gets this API's error shape too.
        # GuardedAppRunner (one of those) adds the header timeout and idle keep-alive bound;
        # no cap here: the engine's clients are the proxy, which caps, and the controller.
        guard = ListenerGuard("engine", ConnectionSettings(max_connections=None))
        runner = GuardedAppRunner(self.app, guard, handler_cancellation=True, access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = _bound_port(site)
        self.state.base_url = f"{self.url}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> EngineServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
