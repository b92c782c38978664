"""Which headers cross the proxy, and the request id it adds.

RFC 9110 section 7.6.1: hop-by-hop headers (and any header named in ``Connection``) describe
one connection and must not be forwarded; everything else (``Authorization`` included)
crosses unchanged, in order, duplicates kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

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
    incoming: CIMultiDictProxy[str], *, add_request_id: bool
) -> tuple[CIMultiDict[str], str | None]:
    """Headers to send upstream. Host is left to the client library (the upstream's own)."""
    out = end_to_end(incoming, drop=("host",))
    request_id: str | None = None
    if add_request_id:
        request_id = out.get(REQUEST_ID)
        if not request_id:
            request_id = uuid.uuid4().hex
            out[REQUEST_ID] = request_id
    return out, request_id


def skipped_auto_headers(incoming: CIMultiDictProxy[str]) -> list[str]:
    return [name for name in CLIENT_AUTO_HEADERS if name not in incoming]


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers to send back. Content-Length is set by the relay itself, from the upstream's."""
    return end_to_end(upstream, drop=("content-length",))
