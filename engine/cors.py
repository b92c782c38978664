"""CORS for the engine's API: browser UIs on this machine may call it, other web pages not.

Lemonade 11.5's rule: a request from a loopback origin (``http://localhost:*``,
``http://127.0.0.1:*``, ``http://[::1]:*``) or one listed in ``allowed_origins`` (flag
``--allowed-origins``, env ``INFEROS_ALLOWED_ORIGINS``, comma-separated, ``*`` for any) is
answered with ``Access-Control-Allow-Origin`` echoing it; any other ``Origin`` gets 403 in
the OpenAI shape, before the route runs, so a web page can neither read answers nor change
state (a load, an unload) through the user's browser. A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered 204 without the API key, which browsers
never send on one. Requests without ``Origin`` (every non-browser client) are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from inferos.proxy.host_guard import is_loopback

ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
# What browser clients of Lemonade send: the OpenAI SDKs' headers among them.
ALLOW_HEADERS = ("Content-Type, Authorization, X-Requested-With, Accept, Origin, "
                 "X-Request-Id, OpenAI-Organization, OpenAI-Project, X-Stainless-Lang, "
                 "X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
                 "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, "
                 "X-Stainless-Timeout")
MAX_AGE_S = "600"


def _origin_host(origin: str) -> str:
    try:
        return (urlsplit(origin).hostname or "").lower()
    except ValueError:
        return ""


@dataclass(frozen=True)
class CorsPolicy:
    allowed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, origins: Iterable[str]) -> CorsPolicy:
        return cls(frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip()))

    def allows(self, origin: str) -> bool:
        wanted = origin.strip().rstrip("/").lower()
        if "*" in self.allowed or wanted in self.allowed:
            return True
        scheme = wanted.split(":", 1)[0]
        return scheme in ("http", "https") and is_loopback(_origin_host(wanted))

    def headers(self, origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Credentials": "true"}

    def preflight(self, origin: str) -> web.Response:
        return web.Response(status=204, headers={
            **self.headers(origin), "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE_S})


def parse_origins(value: str | None) -> tuple[str, ...]:
    return tuple(o.strip() for o in (value or "").split(",") if o.strip())
