"""Errors the engine's HTTP API answers with, in Lemonade's (OpenAI's) JSON shape.

Every error a handler decides is an ``ApiError``; the server's middleware turns it into
``{"error": {"message", "type", "param", "code"}}`` with its status. Errors raised by the
engine core (``ValueError``, ``ModelError``) are translated where they enter the handlers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from inferos.errors import InferOSError


class ApiError(InferOSError):
    """An error answered to the client: HTTP ``status`` and OpenAI's ``type``/``code``."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def invalid_param(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def model_not_found(name: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist or is not prepared. "
                         "See GET /api/v1/models?show_all=true for the models this engine knows.",
                    code="model_not_found", param="model")


def context_exceeded(prompt_tokens: int, ctx_size: int) -> ApiError:
    return ApiError(400, f"The prompt has {prompt_tokens} tokens but the context of the loaded "
                         f"model is {ctx_size} tokens; shorten the prompt or load the model with "
                         "a larger ctx_size.",
                    code="context_length_exceeded", param="messages")


def invalid_token_id(token: int, index: int, vocab: int) -> ApiError:
    return ApiError(400, f"Invalid token id {token} at prompt[{index}]: this model's token ids "
                         f"are 0 to {vocab - 1}.", code="invalid_token_id", param="prompt")


def from_http_exception(method: str, path: str, exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no route, wrong method, body over the limit...) in this API's
    shape; aiohttp would answer them in plain text."""
    status = exc.status
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    if method == "CONNECT":
        # CONNECT names a host, not a route: this server is nobody's forward proxy.
        return ApiError(405, "CONNECT is not supported: this server is not a forward proxy.",
                        code="method_not_allowed", headers={"Allow": "GET, POST"})
    if isinstance(exc, web.HTTPNotFound):
        return ApiError(404, f"No route {method} {path[:200]} on this server.",
                        code="not_found")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return ApiError(405, f"{method} is not allowed on {path[:200]}.",
                        code="method_not_allowed", headers=headers)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return ApiError(413, f"The request body is over this server's limit: {exc.text}",
                        code="request_too_large")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, exc.text or exc.reason, kind=kind,
                    code=exc.reason.lower().replace(" ", "_"), headers=headers)


def unauthorized() -> ApiError:
    return ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error", code="invalid_api_key")
