"""Which headers cross the proxy, and the request id it adds.

RFC 9110 section 7.6.1: hop-by-hop headers (and any header named in ``Connection``) describe
one connection and must not be forwarded; everything else (``Authorization`` included)
crosses unchanged, in order, duplicates kept.

Two exceptions keep a client on the proxy and the backend to the proxy's clients:

- ``Host``: the client's own is sent to a backend on this machine (so the redirects and
  absolute URLs it builds name the proxy), and the upstream's own to a remote one (which
  may route by name or check it against its certificate);
- ``Location``/``Content-Location`` of a response that point at the backend's own address
  are pointed back at the proxy, as the client addressed it: a client that follows a
  redirect must not leave the proxy (and its guards) behind;
- ``Authorization`` to a backend Infer-OS runs itself is replaced by that backend's key
  (``ProxySettings.upstream_api_key``); nothing else can use that process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_ID = "X-Request-Id"

# aiohttp's client adds these when absent; a transparent proxy must not.
CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop ones and without ``drop``."""
    skip = HOP_BY_HOP | _connection_tokens(headers) | {name.lower() for name in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def request_headers(
    incoming: CIMultiDictProxy[str], *, add_request_id: bool, forward_host: bool = False,
    upstream_key: str | None = None,
) -> tuple[CIMultiDict[str], str | None]:
    """Headers to send upstream. Host is the client's when ``forward_host``, else left to
    the client library (the upstream's own); with ``upstream_key`` the client's
    Authorization gives way to ``Bearer <upstream_key>``."""
    drop: tuple[str, ...] = () if forward_host else ("host",)
    if upstream_key:
        drop += ("authorization",)
    out = end_to_end(incoming, drop=drop)
    if upstream_key:
        out["Authorization"] = f"Bearer {upstream_key}"
    request_id: str | None = None
    if add_request_id:
        request_id = out.get(REQUEST_ID)
        if not request_id:
            request_id = uuid.uuid4().hex
            out[REQUEST_ID] = request_id
    return out, request_id


def skipped_auto_headers(incoming: CIMultiDictProxy[str]) -> list[str]:
    return [name for name in CLIENT_AUTO_HEADERS if name not in incoming]


def response_headers(upstream: CIMultiDictProxy[str], *, upstream_origin: str = "",
                     proxy_origin: str = "") -> CIMultiDict[str]:
    """Headers to send back. Content-Length is set by the relay itself, from the upstream's.
    A Location into ``upstream_origin`` is pointed at ``proxy_origin`` (when both given)."""
    out = end_to_end(upstream, drop=("content-length",))
    if upstream_origin and proxy_origin:
        for name in LOCATION_HEADERS:
            if name in out:
                out[name] = point_at_proxy(out[name], upstream_origin, proxy_origin)
    return out


LOCATION_HEADERS = ("Location", "Content-Location")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _same_server(a: str, b: str) -> bool:
    """Whether two ``scheme://host:port`` name one server; loopback names are one name
    (a backend told 127.0.0.1 may write ``localhost`` into its redirects)."""
    x, y = urlsplit(a), urlsplit(b)
    try:
        x_port = x.port or _DEFAULT_PORTS.get(x.scheme)
        y_port = y.port or _DEFAULT_PORTS.get(y.scheme)
    except ValueError:
        return False
    same_host = x.hostname == y.hostname or (x.hostname in _LOOPBACK_HOSTS
                                             and y.hostname in _LOOPBACK_HOSTS)
    return x.scheme == y.scheme and x_port == y_port and same_host


def point_at_proxy(location: str, upstream: str, proxy_origin: str) -> str:
    """``location`` as the client should follow it: one into ``upstream`` (an origin, maybe
    with a path prefix) now names ``proxy_origin``; anything else is left as it is."""
    if "://" not in location[:16]:
        return location  # relative: already resolves against the proxy
    try:
        target, base = urlsplit(location), urlsplit(upstream)
    except ValueError:
        return location
    prefix = base.path.rstrip("/")
    path = target.path or "/"
    if not _same_server(f"{target.scheme}://{target.netloc}",
                        f"{base.scheme}://{base.netloc}"):
        return location
    if prefix:
        if path != prefix and not path.startswith(prefix + "/"):
            return location  # outside what the proxy maps: it cannot be reached through it
        path = path[len(prefix):] or "/"
    query = f"?{target.query}" if target.query else ""
    fragment = f"#{target.fragment}" if target.fragment else ""
    return f"{proxy_origin}{path}{query}{fragment}"
