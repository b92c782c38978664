"""The agent API described as OpenAPI 3.1, served at ``GET /openapi.json``.

The request schemas are derived from the validators' own declarations, so the document
cannot drift from the API: ``POST /v1/run-context`` from ``run_context.CALLER_FIELDS``, and
``POST /v1/policy`` from the policy settings of ``setting_table.SETTINGS``: every key with
its type, bounds, choices, default and doc, in nested objects that admit no other property.
A declaration added there appears here. The schema is what a client can check before
sending; ``policy.apply_patch`` also checks what a schema cannot say (``L1_int8 >= L2_int4
>= L3_evict``). The answer lists the same keys, each applied, not applicable, not applied
or pending. tests/controller/test_openapi_truth.py holds the document to the validators.
"""

from __future__ import annotations

from typing import Any

from inferos.controller.backend import APPLIED, NOT_APPLICABLE, NOT_APPLIED, PENDING
from inferos.controller.run_context import CALLER_FIELDS
from inferos.controller.setting_table import POLICY_SETTINGS

OUTCOME_STATUSES = (APPLIED, NOT_APPLIED, NOT_APPLICABLE, PENDING)

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "param": {"type": ["string", "null"]},
        "type": {"type": "string"}, "code": {"type": ["string", "null"]}}}}}

# What the admin listener's guard (admin_guard.py) answers to a request it refuses: any
# request with a foreign Host; a state-changing one also for its Origin, token, type.
_REFUSED = {str(status): {"description": why, "content": {"application/json": {
    "schema": _ERROR}}} for status, why in (
        (401, "listen.admin_token is set and 'Authorization: Bearer <token>' was not given "
              "(code invalid_admin_token)"),
        (403, "a Host that is not this machine's (code forbidden_host) or a foreign Origin "
              "(code forbidden_origin)"),
        (415, "not Content-Type: application/json (code unsupported_media_type)"))}
_HOST_REFUSED = {"403": {"description": "a Host that is not this machine's (code "
                                        "forbidden_host); reads need no token",
                         "content": {"application/json": {"schema": _ERROR}}}}


def policy_answer_schema() -> dict[str, Any]:
    """JSON Schema of the 200 answer: per policy key, applied or not and why."""
    outcome = {"type": "object", "properties": {
        "status": {"enum": list(OUTCOME_STATUSES)}, "value": {}, "in_effect": {},
        "where": {"type": ["string", "null"]}, "reason": {"type": "string"}}}
    return {"type": "object", "properties": {
        "version": {"type": "integer", "minimum": 0},
        "keys": {"type": "object", "additionalProperties": False,
                 "properties": {key: outcome for key in POLICY_SETTINGS}}}}


def policy_request_schema() -> dict[str, Any]:
    """JSON Schema of a ``POST /v1/policy`` body: a partial policy, every key optional."""
    root: dict[str, Any] = _object()
    for key, setting in POLICY_SETTINGS.items():
        node = root
        *sections, leaf = key.split(".")
        for name in sections:
            node = node["properties"].setdefault(name, _object())
        node["properties"][leaf] = setting.json_schema()
    return root


def run_context_request_schema() -> dict[str, Any]:
    """JSON Schema of a ``POST /v1/run-context`` body, from ``run_context.CALLER_FIELDS``
    (what ``RunContext.from_api`` validates against): no other field is accepted."""
    return {"type": "object", "additionalProperties": False,
            "required": [key for key, spec in CALLER_FIELDS.items() if spec.required],
            "properties": {key: spec.json_schema() for key, spec in CALLER_FIELDS.items()}}


def _object() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": {}}


def build_openapi() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Infer-OS agent API", "version": "1"},
        "paths": {
            "/v1/policy": {"post": {
                "summary": "Change the policy (partial, all-or-nothing)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": policy_request_schema()}}},
                "responses": {"200": {"description": "published; per key applied, not "
                                                     "applicable, not applied or pending",
                                      "content": {"application/json": {
                                          "schema": policy_answer_schema()}}},
                              "400": {"description": "rejected; nothing changed",
                                      "content": {"application/json": {"schema": _ERROR}}},
                              **_REFUSED}}},
            "/v1/run-context": {"post": {
                "summary": "Tell the controller about a coming request",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": run_context_request_schema()}}},
                "responses": {"204": {"description": "accepted"},
                              "400": {"description": "invalid",
                                      "content": {"application/json": {"schema": _ERROR}}},
                              **_REFUSED}}},
            "/v1/metrics": {"get": {"summary": "Current figures; null where unmeasurable",
                                    "responses": {"200": {"description": "metrics"},
                                                  **_HOST_REFUSED}}},
            "/v1/health": {"get": {"summary": "ok | degraded | passthrough",
                                   "responses": {"200": {"description": "health"},
                                                 **_HOST_REFUSED}}},
            "/metrics": {"get": {"summary": "Prometheus text format",
                                 "responses": {"200": {"description": "exposition"},
                                               **_HOST_REFUSED}}},
            "/v1/dashboard": {"get": {"summary": "The dashboard's figures (null: not measured)",
                                      "responses": {"200": {"description": "dashboard data"},
                                                    **_HOST_REFUSED}}},
            "/": {"get": {"summary": "The dashboard page (HTML; also /dashboard)",
                          "responses": {"200": {"description": "the page"},
                                        **_HOST_REFUSED}}},
            "/dashboard": {"get": {"summary": "The dashboard page (HTML)",
                                   "responses": {"200": {"description": "the page"},
                                                 **_HOST_REFUSED}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"},
                                                    **_HOST_REFUSED}}},
        },
    }
