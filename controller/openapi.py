"""The agent API described as OpenAPI 3.1, served at ``GET /openapi.json``.

The request schema of ``POST /v1/policy`` is derived from the policy settings of
``setting_table.SETTINGS``: every key with its type, bounds, choices, default and doc, in
nested objects that admit no other property. A declaration added there appears here. The
schema is what a client can check before sending; ``policy.apply_patch`` also checks what a
schema cannot say (``L1_int8 >= L2_int4 >= L3_evict``). The answer lists the same keys,
each applied, not applicable, not applied or pending.
"""

from __future__ import annotations

from typing import Any

from inferos.controller.backend import APPLIED, NOT_APPLICABLE, NOT_APPLIED, PENDING
from inferos.controller.setting_table import POLICY_SETTINGS

OUTCOME_STATUSES = (APPLIED, NOT_APPLIED, NOT_APPLICABLE, PENDING)

_NUM = {"type": ["number", "null"], "minimum": 0}
_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "param": {"type": ["string", "null"]},
    "type": {"type": "string"}}}}}

# What the admin listener's guard answers to a state-changing request it refuses.
_REFUSED = {str(status): {"description": why, "content": {"application/json": {
    "schema": _ERROR}}} for status, why in (
        (401, "the admin token is set and was not given"),
        (403, "a foreign Host or Origin"),
        (415, "not Content-Type: application/json"))}


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
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["seq_len", "batch"],
                    "additionalProperties": False, "properties": {
                        "seq_len": {"type": "integer", "minimum": 0},
                        "batch": {"type": "integer", "minimum": 0},
                        "target_ftl_ms": _NUM, "quality_budget": _NUM,
                        "model": {"type": "string", "maxLength": 128},
                        "max_tokens": {"type": ["integer", "null"]},
                        "stream": {"type": "boolean"}}}}}},
                "responses": {"204": {"description": "accepted"},
                              "400": {"description": "invalid",
                                      "content": {"application/json": {"schema": _ERROR}}},
                              **_REFUSED}}},
            "/v1/metrics": {"get": {"summary": "Current figures; null where unmeasurable",
                                    "responses": {"200": {"description": "metrics"}}}},
            "/v1/health": {"get": {"summary": "ok | degraded | passthrough",
                                   "responses": {"200": {"description": "health"}}}},
            "/metrics": {"get": {"summary": "Prometheus text format",
                                 "responses": {"200": {"description": "exposition"}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }
