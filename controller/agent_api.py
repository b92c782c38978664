"""The agent API on the admin listener: policy, run-context, metrics, health, OpenAPI.

    POST /v1/policy        partial policy; 200 {"version", "keys": {key: status}} saying per
                           key applied / not_applicable / not_applied / pending, or
                           400 {"error":{"message","param"}} (nothing changed)
    POST /v1/run-context   {"seq_len","batch","target_ftl_ms","quality_budget","model"?}; 204
    GET  /v1/metrics       the seed's shape; what this machine cannot measure is null
    GET  /v1/health        {"status": "ok"|"degraded"|"passthrough", ...}
    GET  /openapi.json     this API, described

Loopback is not a trust boundary: a web page in the user's browser can reach 127.0.0.1.
So every request that changes state must come with ``Content-Type: application/json``
(a page's form or ``no-cors`` fetch cannot send that without a CORS preflight, which this
server never answers), no foreign ``Origin``, a ``Host`` that names this machine (DNS
rebinding), and the admin token when one is set (``listen.admin_token``,
``INFEROS_ADMIN_TOKEN``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from inferos.controller.controller import Controller
from inferos.controller.openapi import build_openapi
from inferos.controller.run_context import RunContext
from inferos.errors import ConfigError
from inferos.proxy.admin import HEALTH_PARTS

CONTROLLER = web.AppKey("controller", Controller)
MAX_BODY = 64 * 1024
TOKEN_HEADER = "X-Inferos-Token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# How long POST /v1/policy waits for the engine to acknowledge live keys before answering
# "pending" (the control API answers in milliseconds; a busy machine gets slack).
LIVE_ACK_WAIT_S = 2.0


def _forbidden(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "param": None,
                                        "type": "forbidden"}}, status=status)


def _host_name(value: str) -> str:
    return urlsplit("//" + value).hostname or ""


def refuse_unsafe(request: web.Request, admin_host: str, token: str | None) -> web.Response | None:
    """None when a state-changing request may proceed; else the answer that refuses it."""
    if request.content_type != "application/json":
        return _forbidden(415, "state-changing requests must be Content-Type: application/json")
    host = _host_name(request.headers.get("Host", ""))
    if host not in LOOPBACK_HOSTS and host != admin_host:
        return _forbidden(403, f"Host {host!r} is not this machine's admin address")
    origin = request.headers.get("Origin")
    if origin is not None and _host_name(urlsplit(origin).netloc) not in (*LOOPBACK_HOSTS,
                                                                         admin_host):
        return _forbidden(403, "cross-origin requests may not change Infer-OS")
    if token and not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(),
                                         token.encode()):
        return _forbidden(401, f"missing or wrong {TOKEN_HEADER}")
    return None


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        refused = refuse_unsafe(request, request.app[ADMIN_HOST], request.app[ADMIN_TOKEN])
        if refused is not None:
            return refused
    result: web.StreamResponse = await handler(request)
    return result


ADMIN_HOST = web.AppKey("admin_host", str)
ADMIN_TOKEN = web.AppKey("admin_token", str)


def _bad_request(message: str, param: str | None) -> web.Response:
    return web.json_response({"error": {"message": message, "param": param,
                                        "type": "invalid_request_error"}}, status=400)


async def _json(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ConfigError("body too large", key="(body)")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"not valid JSON: {type(exc).__name__}", key="(body)") from exc


async def post_policy(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    try:
        snapshot = controller.set_policy(await _json(request))
    except ConfigError as exc:
        return _bad_request(exc.reason, exc.key)
    try:
        await asyncio.wait_for(asyncio.wrap_future(controller.live_acknowledged(
            snapshot.version)), LIVE_ACK_WAIT_S)
    except TimeoutError:
        pass  # answered as "pending"; /v1/health shows when it lands
    return web.json_response({"version": snapshot.version,
                              "keys": controller.policy_status()})


async def post_run_context(request: web.Request) -> web.Response:
    try:
        context = RunContext.from_api(await _json(request))
    except ConfigError as exc:
        return _bad_request(exc.reason, exc.key)
    request.app[CONTROLLER].post_run_context(context)
    return web.Response(status=204)


async def get_metrics(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].agent_metrics())


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())


def _health_part(controller: Controller) -> dict[str, Any]:
    part = controller.health()
    snapshot = controller.plane.snapshot
    if snapshot.passthrough:
        part["status"] = "passthrough"
    elif snapshot.limit is not None or snapshot.gates or part["controller"]["actuating"]:
        part["status"] = "degraded"
    return part


def add_agent_api(app: web.Application, controller: Controller, *, admin_host: str,
                  token: str | None = None) -> None:
    app[CONTROLLER] = controller
    app[ADMIN_HOST] = admin_host
    app[ADMIN_TOKEN] = token or ""
    app.middlewares.append(_guard)
    app[HEALTH_PARTS].append(lambda: _health_part(controller))
    app.router.add_post("/v1/policy", post_policy)
    app.router.add_post("/v1/run-context", post_run_context)
    app.router.add_get("/v1/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)


