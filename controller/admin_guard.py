"""Who may use the admin listener (agent API, health, metrics): the checks, in order.

Loopback is not a trust boundary: a web page in the user's browser can send requests to
127.0.0.1, and DNS rebinding can even let it read the answers. So:

1. every request, reads included, needs a ``Host`` that names this machine
   (``proxy/host_guard.py``: loopback, the admin's own listen address,
   ``listen.allowed_hosts``), else 403 ``forbidden_host``;
2. a write (any method but GET, HEAD, OPTIONS) with an ``Origin`` must come from the
   admin's own origin (``http://`` + the Host it was sent to) or one of
   ``listen.allowed_origins`` (``*``: any), else 403 ``forbidden_origin``; no ``Origin``
   at all is a tool (curl, a script), not a page, and is allowed;
3. a write needs the admin token when one is set (``listen.admin_token``,
   ``INFEROS_ADMIN_TOKEN``), as ``Authorization: Bearer <token>`` (``X-Inferos-Token``
   is still read, for callers written before), compared in constant time, else 401
   ``invalid_admin_token``;
4. a write needs ``Content-Type: application/json``, which a page cannot send
   cross-origin without a CORS preflight, and this server answers none; else 415
   ``unsupported_media_type``.

Reads stay open without the token so that Prometheus can scrape ``/metrics`` and
monitors can poll ``/v1/health``. A token is required, at start, when the admin listens
beyond loopback (``check_exposure``). Every refusal is in OpenAI's error shape.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from inferos.errors import ConfigError
from inferos.proxy.errors import openai_error
from inferos.proxy.host_guard import ANY, HostAllowList, forbidden_host, is_loopback
from inferos.proxy.settings import HostPort

__all__ = ["READ_METHODS", "TOKEN_HEADER", "AdminGuard", "check_exposure"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_HEADER = "X-Inferos-Token"  # the older spelling; Authorization: Bearer is the one
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_exposure(admin: HostPort, token: str | None) -> None:
    """Refuses to start an admin listener beyond loopback without a token: anyone on the
    network could otherwise switch the proxy to passthrough or pin settings."""
    if token:
        return
    if not is_loopback(admin.host.lower()):
        raise ConfigError(
            f"the admin API would listen on {admin} (beyond loopback) with no token; set "
            "listen.admin_token (or INFEROS_ADMIN_TOKEN), or listen on 127.0.0.1",
            key="listen.admin_token")


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return request.headers.get(TOKEN_HEADER, "")


@dataclass(frozen=True, slots=True)
class AdminGuard:
    hosts: HostAllowList
    origins: frozenset[str] = frozenset()
    token: str | None = None

    @classmethod
    def of(cls, admin: HostPort, *, token: str | None = None,
           allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
           ) -> AdminGuard:
        origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins)
        return cls(HostAllowList.for_listener(admin.host, tuple(allowed_hosts)), origins,
                   token or None)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        return (ANY in self.origins or origin in self.origins
                or (bool(host) and origin == f"http://{host.strip().lower()}"))

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when ``request`` may proceed; else the answer that refuses it."""
        host = request.headers.get("Host")
        if not self.hosts.allows(host):
            return forbidden_host(host or "")
        if request.method in READ_METHODS:
            return None
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, host or ""):
            return openai_error(
                403, "permission_error",
                f"Origin {origin[:80]!r} may not change Infer-OS (a web page's request); "
                "allow it with listen.allowed_origins if it is yours.",
                code="forbidden_origin")
        if self.token is not None and not hmac.compare_digest(
                _bearer(request).encode(), self.token.encode()):
            return openai_error(
                401, "authentication_error",
                "Missing or wrong admin token: send 'Authorization: Bearer <token>' "
                "(listen.admin_token).", code="invalid_admin_token")
        if request.content_type != "application/json":
            return openai_error(
                415, "invalid_request_error",
                "Requests that change state must be Content-Type: application/json.",
                code="unsupported_media_type")
        return None

    def middleware(self) -> Middleware:
        """The aiohttp middleware that applies ``refuse`` to every request of its app."""
        @web.middleware
        async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            refused = self.refuse(request)
            if refused is not None:
                return refused
            return await handler(request)

        return admin_guard
