"""The proxy's own error responses, in OpenAI's shape.

Only errors that the proxy itself decides come from here (upstream unreachable, idle
timeout, body too large, a request target it cannot forward). Errors from the backend are
relayed untouched, in whichever of Lemonade's two shapes it used.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from inferos.proxy.headers import REQUEST_ID


def openai_error(status: int, kind: str, message: str, *, request_id: str | None = None,
                 param: str | None = None, code: str | None = None) -> web.Response:
    """``code`` defaults to ``kind`` (the proxy's own errors name both alike)."""
    body = {"error": {"message": message, "type": kind, "param": param,
                      "code": code or kind}}
    response = web.json_response(body, status=status)
    if request_id:
        response.headers[REQUEST_ID] = request_id
    return response


def stream_broken_event(outcome: str) -> bytes:
    """The SSE event that ends a stream whose backend went away or fell silent mid-way:
    an ``error`` event in OpenAI's shape, which OpenAI's SDKs raise as an APIError, so a
    client never takes a cut answer for a whole one."""
    what = "went silent" if outcome == "upstream_timeout" else "closed the connection"
    body = {"error": {"message": f"the backend {what} before the stream ended; the text so "
                                 "far is incomplete", "type": outcome, "param": None,
                      "code": outcome}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def upstream_unavailable(upstream: str, detail: str, request_id: str | None) -> web.Response:
    return openai_error(
        502, "upstream_unavailable",
        f"Infer-OS could not reach the backend at {upstream}: {detail}. Is the server running?",
        request_id=request_id)


def upstream_timeout(seconds: float | None, request_id: str | None) -> web.Response:
    return openai_error(
        504, "upstream_timeout",
        f"The backend sent nothing for {seconds} s (idle-read timeout).",
        request_id=request_id)


def body_too_large(limit: int, request_id: str | None) -> web.Response:
    return openai_error(
        413, "request_too_large",
        f"The request body exceeds the proxy's limit of {limit} bytes.",
        request_id=request_id)


def backend_reloading(reason: str, retry_after_s: int, request_id: str | None) -> web.Response:
    response = openai_error(
        503, "backend_reloading",
        f"The backend is reloading this model ({reason}) and did not come back within the "
        f"proxy's wait; retry in {retry_after_s} s.",
        request_id=request_id)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def backend_unresponsive(reason: str, retry_after_s: int,
                         request_id: str | None) -> web.Response:
    response = openai_error(
        503, "backend_unresponsive",
        f"The backend stopped answering ({reason}) and did not come back within the "
        f"proxy's wait; retry in {retry_after_s} s.",
        request_id=request_id)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


@web.middleware
async def unroutable_targets(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """aiohttp's own refusals in OpenAI's shape, instead of its plain text. The catch-all
    route takes every origin-form and absolute-form target, so what is left is a target
    with no path: CONNECT's authority-form (``CONNECT host:443``; Infer-OS is not a forward
    proxy, so 405) and ``OPTIONS *`` (404)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.method == "CONNECT":
            response = openai_error(405, "method_not_allowed",
                                    "CONNECT is not supported: Infer-OS is a reverse proxy "
                                    "for its backend, not a forward proxy.")
            response.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
            return response
        kind = {404: "not_found", 405: "method_not_allowed",
                413: "request_too_large"}.get(exc.status, "invalid_request")
        return openai_error(exc.status, kind, exc.text or exc.reason)
