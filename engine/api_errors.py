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


def unauthorized() -> ApiError:
    return ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error", code="invalid_api_key")
