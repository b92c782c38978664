"""The engine's control endpoint: ``/inferos/v1/policy``, the live policy, versioned.

Not part of Lemonade's API, so not under its prefixes. ``POST`` takes a whole policy
(engine/engine_policy.py) and answers, without waiting for a running generation, the ack
of engine/policy_ack.py: ``{"version", "applied", "not_applicable"}``. The new value is in
effect when the answer leaves (``ModelSlot.set_policy``); the parked KV is re-leveled to it
on the model's worker thread as soon as that thread is free, and ``GET /api/v1/stats``
says when (``policy.releveled_version``). ``GET`` answers the ack of the policy in effect
(version 0, the engine's start values, until the first ``POST``).

Versions: lower than the one in effect is 409 with the current ``version``; the same one
again is 200 with the same ack if it states the same values (a retry), else 409 (two
different policies under one version are a bug in whoever sent them).

Safety. A web page can make a browser send requests to 127.0.0.1, and DNS rebinding can
put an attacker's name on it, so both methods refuse: a peer that is not loopback, a
``Host`` that is not 127.0.0.1, localhost or [::1] (any port), and any ``Origin`` header
(no browser-initiated request is legitimate here); with a control token
(``--control-token``, ``INFEROS_ENGINE_CONTROL_TOKEN``), a missing or wrong
``X-Inferos-Control-Token`` (compared in constant time). ``POST`` also needs
``Content-Type: application/json``, which a page cannot send cross-origin without a
preflight. The server's ``--api-key`` applies here as to every route. All errors are in
the engine's OpenAI shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

import onnxruntime as ort
from aiohttp import web

from inferos.engine.api_errors import ApiError
from inferos.engine.api_requests import json_body
from inferos.engine.engine_policy import EnginePolicy, parse_policy
from inferos.engine.engine_state import ENGINE, EngineState
from inferos.engine.policy_ack import EngineFacts, PolicyAck, acknowledge
from inferos.engine.runtime import best_provider

__all__ = ["CONTROL_TOKEN_HEADER", "POLICY_PATH", "add_policy_routes", "policy_ack",
           "policy_stats"]

log = logging.getLogger(__name__)

POLICY_PATH = "/inferos/v1/policy"
CONTROL_TOKEN_HEADER = "X-Inferos-Control-Token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _forbidden(message: str, code: str) -> ApiError:
    return ApiError(403, message, kind="permission_error", code=code)


def _host_name(host: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8022`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(address: str | None) -> bool:
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_control_request(request: web.Request, token: str | None) -> None:
    """Raises 403 unless the request may use the control endpoint (module docstring)."""
    if not _is_loopback(request.remote):
        raise _forbidden("The control endpoint answers loopback peers only.", "not_loopback")
    if _host_name(request.headers.get("Host", "")) not in LOOPBACK_NAMES:
        raise _forbidden("The control endpoint answers only Host 127.0.0.1, localhost or "
                         "[::1].", "forbidden_host")
    if "Origin" in request.headers:
        raise _forbidden("The control endpoint refuses requests that carry an Origin "
                         "header (browser requests).", "forbidden_origin")
    if token is not None:
        sent = request.headers.get(CONTROL_TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise _forbidden(f"Missing or wrong {CONTROL_TOKEN_HEADER}.",
                             "invalid_control_token")


def _facts(engine: EngineState) -> EngineFacts:
    state = engine.slot.state
    if state is not None:
        return state.model.facts()
    defaults = engine.defaults
    return EngineFacts(
        provider=defaults.provider or best_provider(),
        available_providers=tuple(ort.get_available_providers()),
        prefix_cache=defaults.prefix_cache,
        no_calibration="no model is loaded: the quality guard uses the KV calibration of "
                       "the model loaded next")


def policy_ack(engine: EngineState, policy: EnginePolicy | None = None) -> PolicyAck:
    """The ack of ``policy`` (by default the one in effect), as this engine stands now."""
    return acknowledge(policy if policy is not None else engine.slot.policy, _facts(engine))


def policy_stats(engine: EngineState) -> dict[str, Any]:
    """``GET stats``' ``policy``: version, re-leveled version, what is in effect."""
    ack = policy_ack(engine)
    return {"version": ack.version, "releveled_version": engine.slot.releveled_version(),
            **ack.applied, "not_applicable": ack.not_applicable}


async def get_policy(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    check_control_request(request, engine.control_token)
    return web.json_response(policy_ack(engine).as_json())


async def post_policy(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    check_control_request(request, engine.control_token)
    if request.content_type != "application/json":
        raise ApiError(415, "The body must be sent as Content-Type: application/json.",
                       code="unsupported_media_type")
    wanted = parse_policy(await json_body(request))
    current = engine.slot.policy
    if wanted.version < current.version or (
            wanted.version == current.version and not wanted.same_settings(current)):
        why = (f"version {wanted.version} is older than the version in effect, "
               f"{current.version}" if wanted.version < current.version else
               f"version {wanted.version} is in effect with other values")
        error = ApiError(409, f"Policy not applied: {why}; send a higher version.",
                         code="version_conflict", param="version")
        return web.json_response({**error.body(), "version": current.version}, status=409)
    if wanted.version > current.version:
        engine.slot.set_policy(wanted)
        log.info("policy version %d in effect", wanted.version)
    return web.json_response(policy_ack(engine).as_json())


def add_policy_routes(app: web.Application) -> None:
    app.router.add_get(POLICY_PATH, get_policy)
    app.router.add_post(POLICY_PATH, post_policy)
