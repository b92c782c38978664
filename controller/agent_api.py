"""The agent API on the admin listener: policy, run-context, metrics, health, OpenAPI.

    POST /v1/policy        partial policy; 200 {"version", "keys": {key: status}} saying per
                           key applied / not_applicable / not_applied / pending, or
                           400 {"error":{"message","param"}} (nothing changed)
    POST /v1/run-context   {"seq_len","batch","target_ftl_ms","quality_budget","model"?}; 204
    GET  /v1/metrics       the seed's shape; what this machine cannot measure is null
    GET  /v1/health        {"status": "ok"|"degraded"|"passthrough", ...}
    GET  /openapi.json     this API, described
    GET  /, /dashboard     the dashboard page; GET /v1/dashboard its data (dashboard_routes.py)

Who may call it (Host, Origin, token, content type) is ``admin_guard.py``'s to decide; its
middleware answers before any handler here runs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from inferos.controller.admin_guard import AdminGuard
from inferos.controller.controller import Controller
from inferos.controller.dashboard_routes import add_dashboard_routes
from inferos.controller.openapi import build_openapi
from inferos.controller.run_context import RunContext
from inferos.errors import ConfigError
from inferos.proxy.admin import HEALTH_PARTS

CONTROLLER = web.AppKey("controller", Controller)
MAX_BODY = 64 * 1024
# How long POST /v1/policy waits for the engine to acknowledge live keys before answering
# "pending" (the control API answers in milliseconds; a busy machine gets slack).
LIVE_ACK_WAIT_S = 2.0


def _bad_request(message: str, param: str | None) -> web.Response:
    return web.json_response({"error": {"message": message, "param": param,
                                        "type": "invalid_request_error",
                                        "code": "invalid_value"}}, status=400)


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


def add_agent_api(app: web.Application, controller: Controller, *,
                  guard: AdminGuard) -> None:
    """The agent's routes on the admin app; ``guard`` covers every route of it, the
    proxy's ``/metrics`` and ``/v1/health`` included."""
    app[CONTROLLER] = controller
    app.middlewares.append(guard.middleware())
    app[HEALTH_PARTS].append(lambda: _health_part(controller))
    app.router.add_post("/v1/policy", post_policy)
    app.router.add_post("/v1/run-context", post_run_context)
    app.router.add_get("/v1/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    add_dashboard_routes(app, controller)


