"""``/openapi.json`` says what the agent API does: the bounds of every policy setting, that
unknown fields are refused wherever the validators refuse them, and, for
``POST /v1/run-context``, exactly which bodies are accepted (the schema and
``RunContext.from_api`` agree on generated bodies, boundaries included)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from inferos.controller.openapi import build_openapi
from inferos.controller.policy import Policy, apply_patch
from inferos.controller.run_context import (
    CALLER_FIELDS,
    MAX_CALLER_BATCH,
    MAX_CALLER_TOKENS,
    RunContext,
)
from inferos.controller.setting_table import POLICY_SETTINGS
from inferos.controller.setting_types import ByteSize, Float, Int
from inferos.errors import ConfigError


def _request_schema(path: str) -> dict[str, Any]:
    document = build_openapi()
    schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    Draft202012Validator.check_schema(schema)
    return schema


def _leaf(schema: dict[str, Any], key: str) -> dict[str, Any]:
    node = schema
    for name in key.split("."):
        assert node.get("additionalProperties") is False, f"{key}: open object above it"
        node = node["properties"][name]
    return node


def _numeric(node: dict[str, Any]) -> dict[str, Any]:
    """The integer/number branch of a leaf (ByteSize is oneOf integer | "64MiB" string;
    nullable pins may be anyOf [..., null])."""
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        found = _numeric(branch)
        if found:
            return found
    return node if "minimum" in node or "exclusiveMinimum" in node else {}


@pytest.mark.parametrize("key", sorted(POLICY_SETTINGS))
def test_every_policy_setting_is_in_the_document_with_its_bounds(key: str) -> None:
    setting = POLICY_SETTINGS[key]
    node = _leaf(_request_schema("/v1/policy"), key)
    kind = setting.kind
    if isinstance(kind, Int | ByteSize):
        bounds = _numeric(node)
        assert (bounds["minimum"], bounds["maximum"]) == (kind.minimum, kind.maximum)
    elif isinstance(kind, Float):
        bounds = _numeric(node) if kind.minimum is not None else node
        if kind.minimum is not None:
            name = "exclusiveMinimum" if kind.above else "minimum"
            assert bounds[name] == kind.minimum
        if kind.maximum is not None:
            assert bounds["maximum"] == kind.maximum
    if setting.nullable:
        assert "null" in str(node), f"{key} may be null but the document says not"


def test_ctx_size_minimum_is_documented() -> None:
    # What schemathesis found: the API refuses ctx_size 16; the document must say so.
    node = _numeric(_leaf(_request_schema("/v1/policy"), "backend.ctx_size"))
    assert node["minimum"] == 256
    with pytest.raises(ConfigError):
        apply_patch(Policy(), {"backend": {"ctx_size": 255}})


def _sections(schema: dict[str, Any], prefix: str = "") -> list[str]:
    found = [prefix]
    for name, node in schema["properties"].items():
        if node.get("type") == "object":
            found += _sections(node, f"{prefix}.{name}" if prefix else name)
    return found


@pytest.mark.parametrize("section", _sections(_request_schema("/v1/policy")))
def test_an_unknown_policy_field_is_refused_where_the_document_says(section: str) -> None:
    schema = _request_schema("/v1/policy")
    node = schema
    patch: dict[str, Any] = {}
    inner = patch
    for name in filter(None, section.split(".")):
        node = node["properties"][name]
        inner[name] = {}
        inner = inner[name]
    assert node["additionalProperties"] is False
    inner["no_such_field"] = 1
    assert not Draft202012Validator(schema).is_valid(patch)
    with pytest.raises(ConfigError):
        apply_patch(Policy(), patch)


def test_run_context_fields_are_the_validators() -> None:
    schema = _request_schema("/v1/run-context")
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(CALLER_FIELDS)
    assert set(schema["required"]) == {"seq_len", "batch"}
    assert schema["properties"]["seq_len"]["maximum"] == MAX_CALLER_TOKENS
    assert schema["properties"]["batch"]["maximum"] == MAX_CALLER_BATCH


def _accepted(body: Any) -> bool:
    try:
        RunContext.from_api(body)
    except ConfigError:
        return False
    return True


# Values near every bound the validators have, and of every JSON type.
_EDGE_INTS = st.sampled_from([-1, 0, 1, 2, 255, 256, MAX_CALLER_BATCH, MAX_CALLER_BATCH + 1,
                              MAX_CALLER_TOKENS, MAX_CALLER_TOKENS + 1, 2**70])
_VALUES = st.one_of(
    st.none(), st.booleans(), _EDGE_INTS, st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([-0.5, 0.0, 2.0, 1.5]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=140),
    st.sampled_from(["", "m", "x" * 128, "x" * 129]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.none(),
                                                         max_size=1))
_KEYS = st.sampled_from([*CALLER_FIELDS, "extra"])


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(_KEYS, _VALUES, max_size=8)
       | st.fixed_dictionaries({"seq_len": _EDGE_INTS, "batch": _EDGE_INTS},
                               optional={k: _VALUES for k in CALLER_FIELDS
                                         if not CALLER_FIELDS[k].required}))
def test_the_run_context_schema_accepts_exactly_what_the_api_accepts(body: Any) -> None:
    schema = _request_schema("/v1/run-context")
    assert Draft202012Validator(schema).is_valid(body) == _accepted(body), body
