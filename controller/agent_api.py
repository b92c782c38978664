"""The agent API on the admin listener: policy, run-context, metrics, health, OpenAPI.

    POST /v1/policy        partial policy; 204, or 400 {"error":{"message","param"}}
    POST /v1/run-context   {"seq_len","batch","target_ftl_ms","quality_budget","model"?}; 204
    GET  /v1/metrics       the seed's shape; what this machine cannot measure is null
    GET  /v1/health        {"status": "ok"|"degraded"|"passthrough", ...}
    GET  /openapi.json     this API, described
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from inferos.controller.controller import Controller
from inferos.controller.run_context import RunContext
from inferos.errors import ConfigError
from inferos.proxy.admin import HEALTH_PARTS

CONTROLLER = web.AppKey("controller", Controller)
MAX_BODY = 64 * 1024


def _bad_request(message: str, param: str | None) -> web.Response:
    return web.json_response({"error": {"message": message, "param": param,
                                        "type": "invalid_request_error"}}, status=400)


async def _json(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ConfigError("body too large", key="(body)")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON: {exc}", key="(body)") from exc


async def post_policy(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    try:
        controller.set_policy(await _json(request))
    except ConfigError as exc:
        return _bad_request(exc.reason, exc.key)
    return web.Response(status=204)


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
    return web.json_response(OPENAPI)


def _health_part(controller: Controller) -> dict[str, Any]:
    part = controller.health()
    mode = controller.runtime.mode
    if mode.passthrough:
        part["status"] = "passthrough"
    elif controller.runtime.admission.limit is not None or part["controller"]["actuating"]:
        part["status"] = "degraded"
    return part


def add_agent_api(app: web.Application, controller: Controller) -> None:
    app[CONTROLLER] = controller
    app[HEALTH_PARTS].append(lambda: _health_part(controller))
    app.router.add_post("/v1/policy", post_policy)
    app.router.add_post("/v1/run-context", post_run_context)
    app.router.add_get("/v1/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)


_NUM = {"type": ["number", "null"]}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "param": {"type": ["string", "null"]}}}}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Infer-OS agent API", "version": "1"},
    "paths": {
        "/v1/policy": {"post": {
            "summary": "Change the policy (partial, all-or-nothing)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "mode": {"enum": ["optimize", "passthrough"]},
                    "profile": {"enum": ["safe", "balanced", "aggressive"]},
                    "quality": {"type": "object"}, "kv": {"type": "object"},
                    "io": {"type": "object"}, "scheduler": {"type": "object"},
                    "backend": {"type": "object", "properties": {
                        "ctx_size": {"type": ["integer", "null"]},
                        "threads": {"type": ["integer", "null"]},
                        "provider": {"type": ["string", "null"]}}}}}}}},
            "responses": {"204": {"description": "applied"},
                          "400": {"description": "rejected; nothing changed",
                                  "content": {"application/json": {"schema": _ERROR}}}}}},
        "/v1/run-context": {"post": {
            "summary": "Tell the controller about a coming request",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["seq_len", "batch"], "properties": {
                    "seq_len": {"type": "integer", "minimum": 0},
                    "batch": {"type": "integer", "minimum": 0},
                    "target_ftl_ms": _NUM, "quality_budget": _NUM,
                    "model": {"type": "string"}}}}}},
            "responses": {"204": {"description": "accepted"},
                          "400": {"description": "invalid",
                                  "content": {"application/json": {"schema": _ERROR}}}}}},
        "/v1/metrics": {"get": {"summary": "Current figures; null where unmeasurable",
                                "responses": {"200": {"description": "metrics"}}}},
        "/v1/health": {"get": {"summary": "ok | degraded | passthrough",
                               "responses": {"200": {"description": "health"}}}},
        "/metrics": {"get": {"summary": "Prometheus text format",
                             "responses": {"200": {"description": "exposition"}}}},
    },
}
