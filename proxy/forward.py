"""Forwarding one HTTP request: body streamed up, response streamed down, unchanged.

Contract:
- method, raw path and query string, end-to-end headers and body reach the upstream as sent;
  hop-by-hop headers are dropped and ``X-Request-Id`` is added when absent (not in
  passthrough mode, which adds nothing);
- status, reason, end-to-end headers and body bytes return as the upstream sent them, each
  chunk written as soon as it arrives (SSE is never buffered); the exceptions are Host,
  a Location into the backend and a managed backend's key (``headers.py``);
- the proxy answers on its own only when the upstream cannot: 502 unreachable, 504 silent
  past the idle timeout before answering, 413 body over the limit;
- once a response has started, a failure upstream ends it after the bytes received so far:
  an SSE stream gets one OpenAI-shaped ``error`` event and ends (its clients then see an
  error, not a short answer); another chunked response is cut, as is a response with a
  Content-Length (the client sees a broken body rather than a complete-looking one);
- a client that goes away cancels the handler, which closes the upstream connection, so
  the backend stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from inferos.proxy import errors, observation
from inferos.proxy.headers import (
    REQUEST_ID,
    request_headers,
    response_headers,
    skipped_auto_headers,
)
from inferos.proxy.host_guard import is_loopback
from inferos.proxy.observation import Observation
from inferos.proxy.observer import Observer
from inferos.proxy.pending_context import PendingContexts, RequestFacts
from inferos.proxy.routes import GENERATION, route_label
from inferos.proxy.settings import ProxySettings

READ_CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024


class BodyTooLarge(Exception):
    pass


@dataclass(slots=True)
class _BodyState:
    too_large: bool = False


async def _request_body(
    request: web.Request, limit: int, obs: Observation | None, state: _BodyState,
    on_done: Callable[[], None] | None,
) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            state.too_large = True
            raise BodyTooLarge(total)
        if obs is not None:
            obs.on_request_chunk(chunk)
        yield chunk
    if on_done is not None:
        on_done()


# Routes whose request facts go to the controller: generations (what it tunes for) and a
# client's own load/unload (after which it leaves the backend alone for a while).
FACT_ROUTES = GENERATION | {"load", "unload"}


def _poster(obs: Observation, queue: PendingContexts, in_flight: int) -> Callable[[], None]:
    def post() -> None:
        if not obs.request_truncated:
            queue.post(RequestFacts(obs.route, bytes(obs.request_body), in_flight))
    return post


@functools.lru_cache(maxsize=64)
def is_local(upstream: str) -> bool:
    """Whether ``upstream`` runs on this machine: it gets the client's Host (headers.py)."""
    host = urlsplit(upstream).hostname
    return host is not None and is_loopback(host)


def upstream_url(base: str, request: web.Request) -> URL:
    # raw_path keeps the client's exact encoding and query string. An absolute-form target
    # (`GET http://host/path`, which a server must accept: RFC 9112 3.2.2) goes upstream in
    # origin-form; aiohttp keeps its path and query, still encoded, in rel_url.
    target = request.raw_path
    if not target.startswith("/"):
        target = request.rel_url.raw_path_qs
    return URL(base + target, encoded=True)


async def forward(
    request: web.Request,
    *,
    settings: ProxySettings,
    session: aiohttp.ClientSession,
    observer: Observer | None,
    upstream: str,
    facts: PendingContexts | None = None,
    in_flight: int = 1,
    body: bytes | None = None,
) -> web.StreamResponse:
    """Forward ``request``; observe it unless ``observer`` is None (passthrough). When the
    body of a generation (or load/unload) request has been sent, its facts go to
    ``facts``. ``body``: the request body, when the proxy already read it (to gate)."""
    obs: Observation | None = None
    on_done = None
    if observer is not None:
        obs = Observation(request.method, request.path, route_label(request.path),
                          settings.observe_max_bytes)
        if facts is not None and obs.route in FACT_ROUTES:
            on_done = _poster(obs, facts, in_flight)
    headers, request_id = request_headers(request.headers, add_request_id=obs is not None,
                                          forward_host=is_local(upstream),
                                          upstream_key=settings.upstream_api_key)
    if obs is not None:
        obs.request_id = request_id

    try:
        return await _relay(request, settings, session, upstream, headers, request_id, obs,
                            on_done, body)
    except asyncio.CancelledError:
        # The client went away before the upstream's response began (a long prefill):
        # handler_cancellation cancels us inside session.request, where no outcome is set.
        if obs is not None and obs.ended is None:
            obs.finish(observation.CLIENT_DISCONNECT)
        raise
    finally:
        if obs is not None and observer is not None:
            if obs.ended is None:
                obs.finish()
            observer.finish(obs)


async def _relay(
    request: web.Request,
    settings: ProxySettings,
    session: aiohttp.ClientSession,
    upstream: str,
    headers: object,
    request_id: str | None,
    obs: Observation | None,
    on_done: Callable[[], None] | None,
    body: bytes | None,
) -> web.StreamResponse:
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        if obs is not None:
            obs.finish(observation.BODY_TOO_LARGE)
            obs.status = 413
        return errors.body_too_large(settings.max_body_bytes, request_id)

    body_state = _BodyState()
    data: bytes | AsyncIterator[bytes] | None = None
    if body is not None or (length is not None and length <= SMALL_BODY):
        # A small declared body is read whole and sent in one write with the headers:
        # streaming it costs an extra round of the event loop and a second TCP segment.
        data = body if body is not None else await request.read()
        if obs is not None:
            obs.on_request_chunk(data)
        if on_done is not None:
            on_done()
    elif request.body_exists:
        data = _request_body(request, settings.max_body_bytes, obs, body_state, on_done)

    try:
        upstream_resp = await session.request(
            request.method,
            upstream_url(upstream, request),
            headers=headers,  # type: ignore[arg-type]
            data=data,
            allow_redirects=False,
            skip_auto_headers=skipped_auto_headers(request.headers),
        )
    except Exception as exc:
        return _failed_before_response(exc, body_state, settings, upstream, request_id, obs)

    try:
        return await _stream_back(request, upstream_resp, request_id, obs, upstream)
    finally:
        # Closing (not releasing) a response that was not read to the end drops the
        # connection, which is how the backend learns that nobody is listening any more.
        if not upstream_resp.content.is_eof():
            upstream_resp.close()
        else:
            upstream_resp.release()


def _failed_before_response(
    exc: Exception,
    body_state: _BodyState,
    settings: ProxySettings,
    upstream: str,
    request_id: str | None,
    obs: Observation | None,
) -> web.Response:
    if body_state.too_large:
        outcome, response = observation.BODY_TOO_LARGE, errors.body_too_large(
            settings.max_body_bytes, request_id)
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        outcome, response = observation.UPSTREAM_UNAVAILABLE, errors.upstream_unavailable(
            upstream, f"connect timed out after {settings.connect_timeout_s} s", request_id)
    elif isinstance(exc, TimeoutError):
        outcome, response = observation.UPSTREAM_TIMEOUT, errors.upstream_timeout(
            settings.idle_timeout_s, request_id)
    elif isinstance(exc, aiohttp.ClientError | OSError):
        outcome, response = observation.UPSTREAM_UNAVAILABLE, errors.upstream_unavailable(
            upstream, type(exc).__name__, request_id)
    else:
        raise exc
    if obs is not None:
        obs.status = response.status
        obs.finish(outcome)
    return response


async def _stream_back(
    request: web.Request,
    upstream_resp: aiohttp.ClientResponse,
    request_id: str | None,
    obs: Observation | None,
    upstream: str,
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream_resp.status,
        reason=upstream_resp.reason,
        # request.host: the Host the client used (the proxy's listener when it sent none).
        headers=response_headers(upstream_resp.headers, upstream_origin=upstream,
                                 proxy_origin=f"http://{request.host}"),
    )
    declared = upstream_resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit():
        response.content_length = int(declared)
    if request_id and REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = request_id
    if obs is not None:
        obs.on_response(upstream_resp.status, upstream_resp.headers.get("Content-Type", ""))

    await response.prepare(request)
    outcome = observation.OK
    try:
        async for chunk in upstream_resp.content.iter_any():
            if obs is not None:
                obs.on_chunk(chunk)
            await response.write(chunk)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        outcome = observation.CLIENT_DISCONNECT
        if obs is not None:
            obs.finish(outcome)
        return response
    except asyncio.CancelledError:
        if obs is not None:
            obs.finish(observation.CLIENT_DISCONNECT)
        raise
    except TimeoutError:
        outcome = observation.UPSTREAM_TIMEOUT
    except (aiohttp.ClientError, OSError):
        outcome = observation.UPSTREAM_DISCONNECT

    if obs is not None:
        obs.finish(outcome)
    sse = upstream_resp.headers.get("Content-Type", "").startswith("text/event-stream")
    if outcome != observation.OK and (response.content_length is not None or not sse):
        # A declared length we can no longer honour, or a body with no way to say it
        # broke: cut the connection rather than end it as if it were complete.
        if request.transport is not None:
            request.transport.close()
        return response
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        if outcome != observation.OK:
            # An event boundary first, in case the backend broke off inside an event.
            await response.write(b"\n\n" + errors.stream_broken_event(outcome))
        await response.write_eof()
    return response
