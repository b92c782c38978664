"""Answers to requests that never reach an application's handlers, in OpenAI's error shape.

aiohttp answers two kinds of failure below the application, in plain text: a request its
HTTP parser refuses (a bad request line, a header too long, a body framing error) and an
exception that escaped every handler and middleware (500). Middlewares see neither (aiohttp
issue #3287), so a client that parses ``{"error": {...}}`` got ``400 Bad Request`` text.
``OpenAIErrorRunner`` is an ``AppRunner`` whose connections answer both as
``{"error": {"message", "type", "param", "code"}}`` with aiohttp's own status, and still
close the connection, as aiohttp does (after a parse error the byte stream cannot be
trusted). aiohttp logs the failure first, as before.

aiohttp has no public seam for this; the runner swaps in a ``RequestHandler`` subclass that
overrides only ``handle_error``, the one method aiohttp itself calls for both cases.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = ["OpenAIErrorRunner", "protocol_error_body"]

# Parser messages quote the bytes they refused: enough to see the mistake, never a body.
_MESSAGE_CHARS = 200


def protocol_error_body(status: int, exc: BaseException | None) -> dict[str, Any]:
    """The OpenAI-shaped body for aiohttp's ``status`` (400-class: the parser refused the
    request; 500: an unhandled exception, whose text stays in the log)."""
    if status >= 500:
        return {"error": {"message": "Internal error; the server's log has the details.",
                          "type": "server_error", "param": None, "code": "internal_error"}}
    detail = getattr(exc, "message", None) or str(exc or "") or "malformed request"
    detail = " ".join(str(detail).split())[:_MESSAGE_CHARS]
    return {"error": {"message": f"The request is not valid HTTP/1.1: {detail}",
                      "type": "invalid_request_error", "param": None,
                      "code": "bad_http_request"}}


class _OpenAIErrorHandler(RequestHandler):
    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # The parent logs, and raises when a response has already started (then no second
        # response can be sent); its plain-text answer is replaced.
        super().handle_error(request, status, exc, message)
        response = web.Response(status=status, content_type="application/json",
                                text=json.dumps(protocol_error_body(status, exc)))
        response.force_close()
        return response


class _OpenAIErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _OpenAIErrorHandler(self, loop=self._loop, **self._kwargs)


class OpenAIErrorRunner(web.AppRunner):
    """``web.AppRunner`` with the same arguments; its listeners answer parser errors and
    unhandled exceptions in OpenAI's shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Server has no __slots__ and _OpenAIErrorServer adds no state: only __call__ differs.
        server.__class__ = _OpenAIErrorServer
        return server
