"""The admin listener's data-plane endpoints: Prometheus ``/metrics`` and ``/v1/health``.

It listens apart from the proxy because Lemonade serves ``/v1/health`` and ``/metrics`` on
its own port, and the proxy must forward those untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from inferos import __version__
from inferos.proxy.app import ProxyRuntime
from inferos.proxy.errors import openai_error

REGISTRY = web.AppKey("registry", CollectorRegistry)
PROXY = web.AppKey("proxy", ProxyRuntime)
# Parts that run beside the proxy (the controller) add their own fields to /v1/health.
HealthPart = Callable[[], dict[str, Any]]
HEALTH_PARTS = web.AppKey("health_parts", list[HealthPart])


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def health_body(runtime: ProxyRuntime) -> dict[str, object]:
    plane = runtime.data_plane
    snapshot = plane.snapshot
    return {
        "status": "passthrough" if snapshot.passthrough else "ok",
        "version": __version__,
        "mode": snapshot.describe(),
        "passthrough": snapshot.passthrough,
        "failsafe_reason": snapshot.failsafe_reason,
        "upstream": snapshot.upstream,
        "in_flight": plane.in_flight(),
        "gates": [{"model": g.model, "reason": g.reason,
                   "closed_ms": round((time.monotonic() - g.closed_at) * 1000, 1)}
                  for g in snapshot.gates],
        "concurrency_limit": snapshot.limit,
        "observed_requests": runtime.observer.records,
        "observation_errors": runtime.observer.errors,
    }


async def health(request: web.Request) -> web.Response:
    body = health_body(request.app[PROXY])
    for part in request.app[HEALTH_PARTS]:
        body.update(part())
    return web.json_response(body)


@web.middleware
async def openai_shaped_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404 and 405 (a path or method the admin API does not have) are plain
    text; every admin error is OpenAI-shaped, as the proxy's are."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            raise
        kind = "not_found" if exc.status == 404 else "method_not_allowed"
        answer = openai_error(exc.status, kind, f"{request.method} {request.path}: "
                              + ("no such admin endpoint" if exc.status == 404
                                 else "method not allowed on this endpoint"))
        if exc.status == 405 and "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer


def build_admin_app(runtime: ProxyRuntime, registry: CollectorRegistry) -> web.Application:
    # Outermost: the guard's refusals and every handler's errors pass through it.
    app = web.Application(middlewares=[openai_shaped_errors])
    app[REGISTRY] = registry
    app[PROXY] = runtime
    app[HEALTH_PARTS] = []
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/health", health)
    return app
