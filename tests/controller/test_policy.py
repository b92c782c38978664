"""The policy and its one table: every declared key is patchable and validated, defaults,
the OpenAPI schema and the docs come from the declarations, and nothing a client sends
raises anything but ConfigError."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferos.controller import openapi
from inferos.controller.openapi import build_openapi, policy_request_schema
from inferos.controller.policy import (
    CACHE_TYPE_NAMES,
    Policy,
    apply_patch,
    flatten,
    policy_keys,
    validate,
)
from inferos.controller.profiles import PROFILE_POLICIES
from inferos.controller.setting_table import (
    BY_PATH,
    POLICY_SETTINGS,
    PROFILES,
    SETTINGS,
    Setting,
    reference_table,
)
from inferos.controller.setting_types import (
    Bool,
    ByteSize,
    Choice,
    Float,
    Int,
    SettingType,
    Text,
)
from inferos.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def _nested(key: str, value: Any) -> dict[str, Any]:
    *sections, leaf = key.split(".")
    patch: dict[str, Any] = {leaf: value}
    for name in reversed(sections):
        patch = {name: patch}
    return patch


def _valid_change(setting: Setting) -> tuple[Any, Any]:
    """A value (as a client sends it) differing from the default, and what it parses to:
    the default nudged within its bounds, so the thresholds stay ordered."""
    kind, default = setting.kind, setting.default
    if isinstance(kind, Int):
        value = kind.minimum if default is None else default + 1
        return value, value
    if isinstance(kind, Float):
        assert kind.minimum is not None and kind.maximum is not None
        step = (kind.maximum - kind.minimum) / 100
        value = default + step if default + step <= kind.maximum else default - step
        return value, value
    if isinstance(kind, Bool):
        return not default, not default
    if isinstance(kind, Choice):
        other = [c for c in kind.choices if c != default]
        return other[-1], other[-1]
    if isinstance(kind, ByteSize):
        return "3MiB", 3 * 2**20
    if isinstance(kind, Text):
        return "cpu", "cpu"
    raise AssertionError(f"no example for {kind!r}")


def _invalid(setting: Setting) -> list[Any]:
    """Values a client might send that are wrong for this setting."""
    kind = setting.kind
    bad: list[Any] = [{"deeper": 1}, [1]]
    if not setting.nullable:
        bad.append(None)
    if isinstance(kind, Int):
        bad += [kind.minimum - 1, kind.maximum + 1, True, 1.5, "3", 2**70,
                float(kind.maximum + 1)]
    elif isinstance(kind, Float):
        assert kind.minimum is not None and kind.maximum is not None
        bad += [kind.maximum + 1, 10**400, True, "0.5"]
        bad.append(kind.minimum if kind.above else kind.minimum - 1)
    elif isinstance(kind, Bool):
        bad += [1, 0, "true", "yes"]
    elif isinstance(kind, Choice):
        bad += ["nonsense", 1, True, kind.choices[0].upper()]
    elif isinstance(kind, ByteSize):
        bad += [0, -1, "lots", "-5MiB", "1e400MiB", "infGiB", True, 1.5, kind.maximum + 1]
    elif isinstance(kind, Text):
        bad += [5, True, "x" * (kind.max_length + 1)]
    return bad


POLICY = list(POLICY_SETTINGS.values())
INVALID = [(s, v) for s in POLICY for v in _invalid(s)]


def _id(case: Any) -> str:
    return case.key if isinstance(case, Setting) else ""


@pytest.mark.parametrize("setting", POLICY, ids=_id)
def test_every_policy_key_is_patchable(setting: Setting) -> None:
    sent, parsed = _valid_change(setting)
    assert flatten(Policy())[setting.key] != parsed
    patched = apply_patch(Policy(), _nested(setting.key, sent))
    assert flatten(patched)[setting.key] == parsed
    if setting.key != "profile":  # a profile brings its bundle: tested below
        others = {k: v for k, v in flatten(patched).items() if k != setting.key}
        assert others == {k: v for k, v in flatten(Policy()).items() if k != setting.key}


@pytest.mark.parametrize(("setting", "value"), INVALID,
                         ids=[f"{s.key}={str(v)[:20]}" for s, v in INVALID])
def test_every_policy_key_rejects_wrong_values_naming_the_field(setting: Setting,
                                                                 value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        apply_patch(Policy(), _nested(setting.key, value))
    assert info.value.key == setting.key
    assert len(str(info.value)) < 300  # a client's megabyte string is not echoed back


@pytest.mark.parametrize(("patch", "key"), [
    ({"kv": {"recent_window": 0}}, "kv.recent_window"),
    ({"kv": {"recent_window": 1_000_001}}, "kv.recent_window"),
    ({"kv": {"recent_window": True}}, "kv.recent_window"),
    ({"kv": {"recent_window": 1.5}}, "kv.recent_window"),
    ({"kv": {"allow_evict": "yes"}}, "kv.allow_evict"),
    ({"kv": {"level_thresholds": {"L1_int8": 1.5}}}, "kv.level_thresholds.L1_int8"),
    ({"kv": {"level_thresholds": {"L3_evict": -0.1}}}, "kv.level_thresholds.L3_evict"),
    ({"kv": {"level_thresholds": {"L1_int8": 0.1}}}, "kv.level_thresholds"),  # order
    ({"io": {"host_pool_bytes": -1}}, "io.host_pool_bytes"),
    ({"backend": {"ctx_size": 255}}, "backend.ctx_size"),
    ({"kv": {"bogus": 1}}, "kv.bogus"),
    ({"bogus": 1}, "bogus"),
    ({"kv": {"level_thresholds": {"L4": 0.1}}}, "kv.level_thresholds.L4"),
    ({"kv": 5}, "kv"),
    ({"kv": {"recent_window": 128}, "io": {"host_pool_bytes": "lots"}}, "io.host_pool_bytes"),
    ({"profile": "turbo"}, "profile"),
    ({"mode": "fast"}, "mode"),
])
def test_patch_errors_name_the_field_and_change_nothing(patch: dict[str, Any], key: str) -> None:
    before = Policy(kv=dataclasses.replace(Policy().kv, recent_window=99))
    with pytest.raises(ConfigError) as info:
        apply_patch(before, patch)
    assert info.value.key == key
    assert before.kv.recent_window == 99 and validate(before) is before


def test_a_body_that_is_not_an_object_is_rejected() -> None:
    bodies: tuple[Any, ...] = (None, [], "kv", 5)
    for body in bodies:
        with pytest.raises(ConfigError) as info:
            apply_patch(Policy(), body)
        assert info.value.key == "(body)"


def test_nulls_unpin_the_backend_pins_only() -> None:
    pinned = apply_patch(Policy(), {"backend": {"ctx_size": 4096, "threads": 2}})
    assert pinned.backend.ctx_size == 4096
    assert apply_patch(pinned, {"backend": {"ctx_size": None}}).backend.ctx_size is None
    with pytest.raises(ConfigError):
        apply_patch(Policy(), {"kv": {"recent_window": None}})


def _deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# Built in the test, not at collection: 100 000 nested dicts kept alive slow down every
# garbage collection of the session.
@pytest.mark.parametrize("make", [
    lambda: {"kv": _deep(100_000)},
    lambda: {"kv": {"recent_window": _deep(100_000)}},
    lambda: {"bogus": _deep(100_000)},
    lambda: {"kv": {"level_thresholds": _deep(100_000)}},
    lambda: {"scheduler": {"mode": "x" * 1_000_000}},
    lambda: {"kv": {str(i): i for i in range(10_000)}},
])
def test_deep_or_huge_patches_raise_config_error_only(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError) as info:
        apply_patch(Policy(), make())
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e999])
def test_nan_and_infinity_are_rejected_everywhere(value: float) -> None:
    # Python's JSON decoder turns NaN, Infinity and 1e999 into floats.
    for key in ("kv.recent_window", "quality.max_delta_ppl", "io.host_pool_bytes",
                "kv.level_thresholds.L1_int8", "backend.ctx_size"):
        with pytest.raises(ConfigError) as info:
            apply_patch(Policy(), _nested(key, value))
        assert info.value.key == key


_NAMES = sorted({part for key in policy_keys() for part in key.split(".")})
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text("ab_1 ", max_size=8)
    | st.sampled_from(["64MiB", "q8_0", "safe", "hybrid", "1"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(_NAMES) | st.text("ab_1", max_size=4), children, max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.sampled_from(_NAMES), _json, max_size=4))
def test_any_json_patch_yields_a_valid_policy_or_config_error(patch: dict[str, Any]) -> None:
    try:
        result = apply_patch(Policy(), patch)
    except ConfigError as exc:
        assert exc.key
        return
    assert validate(result) is result


def _hints(cls: type) -> dict[str, Any]:
    import inferos.controller.policy as module
    return typing.get_type_hints(cls, vars(module))


def _leaves(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.update(_leaves(typing.cast(type, hint), f"{prefix}{name}."))
        elif name in {f.name for f in dataclasses.fields(cls)}:
            out[f"{prefix}{name}"] = hint
    return out


def test_the_policy_dataclasses_are_the_declared_keys_with_their_types() -> None:
    leaves = _leaves(Policy)
    assert list(leaves) == list(policy_keys())
    for key, hint in leaves.items():
        setting = POLICY_SETTINGS[key]
        python = setting.kind.python
        assert hint == (python | None if setting.nullable else python), key


def test_the_policy_defaults_are_the_declared_defaults() -> None:
    assert flatten(Policy()) == {key: s.default for key, s in POLICY_SETTINGS.items()}
    validate(Policy())
    for s in SETTINGS:
        if s.default is not None:
            s.parse(s.default, strict=True)  # every default lies within its own bounds


def test_policy_keys_and_flatten() -> None:
    keys = policy_keys()
    assert {"mode", "profile", "kv.level_thresholds.L1_int8", "backend.ctx_size"} <= set(keys)
    assert len(keys) == len(set(keys))
    assert flatten(Policy())["kv.level_thresholds.L1_int8"] == 0.7
    assert all(BY_PATH["infer_os." + key].policy for key in keys)


def _at(schema: dict[str, Any], key: str) -> dict[str, Any]:
    node = schema
    for part in key.split("."):
        assert node.get("additionalProperties") is False
        node = node["properties"][part]
    return node


def test_the_openapi_policy_schema_lists_every_key_with_its_bounds() -> None:
    document = build_openapi()
    schema = document["paths"]["/v1/policy"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    for key, setting in POLICY_SETTINGS.items():
        node = _at(schema, key)
        assert node["description"] == setting.doc and node["default"] == setting.default
    assert _at(schema, "kv.cache_type")["enum"] == list(CACHE_TYPE_NAMES)
    assert _at(schema, "profile")["enum"] == list(PROFILES)
    assert _at(schema, "scheduler.mode")["enum"] == ["hybrid", "gpu_only", "npu_only",
                                                     "cpu_only"]
    window = _at(schema, "kv.recent_window")
    assert (window["type"], window["minimum"], window["maximum"]) == ("integer", 1, 1_000_000)
    ctx = _at(schema, "backend.ctx_size")
    assert ctx["type"] == ["integer", "null"] and ctx["minimum"] == 256
    assert _at(schema, "kv.level_thresholds.L2_int4")["maximum"] == 1.0
    assert _at(schema, "quality.min_accept_rate")["exclusiveMinimum"] == 0.0
    assert set(document["paths"]) >= {"/v1/policy", "/v1/run-context", "/v1/metrics",
                                      "/v1/health", "/metrics"}


def test_the_answer_schema_lists_every_key_the_report_gives() -> None:
    from inferos.controller import policy_report

    answer = build_openapi()["paths"]["/v1/policy"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    assert list(answer["properties"]["keys"]["properties"]) == list(policy_keys())
    report = policy_report.build(Policy(), False, None, None, {}, {})
    jsonschema.validate({"version": 1, "keys": report}, answer)


def test_a_new_declaration_appears_in_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = Setting("infer_os.kv.new_knob", Int(0, 9), 3, "a knob", policy=True)
    monkeypatch.setattr(openapi, "POLICY_SETTINGS", {**POLICY_SETTINGS, extra.key: extra})
    assert _at(policy_request_schema(), "kv.new_knob")["maximum"] == 9


def test_the_schema_rejects_what_apply_patch_rejects() -> None:
    schema = policy_request_schema()
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for setting in POLICY:
        sent, _ = _valid_change(setting)
        assert validator.is_valid(_nested(setting.key, sent)), setting.key
        for value in _invalid(setting):
            if isinstance(value, str) and isinstance(setting.kind, ByteSize):
                continue  # a pattern cannot bound a size with a unit
            if isinstance(value, float) and math.isinf(value):
                continue
            assert not validator.is_valid(_nested(setting.key, value)), (setting.key, value)
    assert not validator.is_valid({"kv": {"bogus": 1}})
    assert not validator.is_valid({"bogus": 1})


def test_environment_names_are_unique_and_keep_the_aliases() -> None:
    names = [name for s in SETTINGS for name in s.env_names]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"INFEROS_[A-Z0-9_]+", name) for name in names)
    # Environment names read elsewhere, outside the configuration.
    assert not set(names) & {"INFEROS_MODELS_DIR", "INFEROS_CACHE", "INFEROS_HYPOTHESIS"}
    assert BY_PATH["upstream.url"].env_names == ("INFEROS_UPSTREAM_URL", "INFEROS_UPSTREAM")
    assert "INFEROS_LISTEN" in BY_PATH["listen.proxy"].env_names
    assert "INFEROS_MODEL" in BY_PATH["engine.model"].env_names
    assert BY_PATH["passthrough"].env_names == ("INFEROS_PASSTHROUGH",)
    assert len(BY_PATH) == len(SETTINGS)


def test_the_declared_flags_are_the_serve_commands_flags() -> None:
    from inferos.commands import serve

    commands = argparse.ArgumentParser().add_subparsers()
    serve.add_parser(commands)
    serve_parser = commands.choices["serve"]
    flags = {option for action in serve_parser._actions for option in action.option_strings
             if option.startswith("--")} - {"--help", "--config"}
    assert flags == {s.flag for s in SETTINGS if s.flag}


def test_policy_settings_live_under_infer_os() -> None:
    for s in SETTINGS:
        assert s.path.startswith("infer_os.") or not s.policy, s.path
        assert isinstance(s.kind, SettingType) and s.doc


def test_profiles_apply_and_match_the_readme() -> None:
    assert tuple(PROFILE_POLICIES) == PROFILES
    for name, bundle in PROFILE_POLICIES.items():
        assert bundle.profile == name and validate(bundle) is bundle
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\w+)[^|]*\| (\d+) \| ([\d.]+) / ([\d.]+) / "
                      r"([\d.]+) \| (yes|no) \| ([\d.]+) \|$", README.read_text(), re.M)
    assert [row[0] for row in rows] == list(PROFILES)
    for name, cache, window, l1, l2, l3, evict, budget in rows:
        kv = PROFILE_POLICIES[name].kv
        assert (kv.cache_type, kv.recent_window, kv.allow_evict) == (cache, int(window),
                                                                     evict == "yes")
        assert (kv.level_thresholds.L1_int8, kv.level_thresholds.L2_int4,
                kv.level_thresholds.L3_evict) == (float(l1), float(l2), float(l3))
        assert PROFILE_POLICIES[name].quality.max_delta_ppl == float(budget)


def test_a_profile_then_the_fields_keeping_mode_and_pins() -> None:
    current = apply_patch(Policy(), {"mode": "passthrough", "backend": {"threads": 2}})
    safe = apply_patch(current, {"profile": "safe", "kv": {"recent_window": 128}})
    assert safe.profile == "safe" and safe.kv.recent_window == 128
    assert safe.kv.level_thresholds == PROFILE_POLICIES["safe"].kv.level_thresholds
    assert safe.mode == "passthrough" and safe.backend.threads == 2
    adjusted = {**PROFILE_POLICIES,
                "safe": dataclasses.replace(PROFILE_POLICIES["safe"], io=Policy().io)}
    assert apply_patch(current, {"profile": "safe"}, adjusted).io == Policy().io


def test_the_readme_reference_table_is_the_declarations() -> None:
    assert reference_table() in README.read_text()
    assert len(reference_table().splitlines()) == len(SETTINGS) + 2


def test_the_scheduling_keys_have_the_engines_bounds_and_defaults() -> None:
    """The controller refuses exactly what the engine would: the same bounds, declared on
    both sides of the control API, and the same defaults."""
    from inferos.controller.backend import SCHEDULING_KEYS
    from inferos.engine.api_errors import ApiError
    from inferos.engine.engine_policy import POLICY_KEYS, EnginePolicy, dotted

    engine = {key.name: key.parse for key in POLICY_KEYS}
    defaults = dotted(EnginePolicy())
    for key in SCHEDULING_KEYS:
        setting, parse = POLICY_SETTINGS[key], engine[key]
        assert setting.default == defaults[key], key
        kind = setting.kind
        if isinstance(kind, Bool):
            assert parse(key, True) is True and parse(key, False) is False
            continue
        assert isinstance(kind, Int | Float) and kind.minimum is not None
        assert kind.maximum is not None
        for inside in (kind.minimum, kind.maximum):
            assert parse(key, inside) == inside
            assert flatten(apply_patch(Policy(), _nested(key, inside)))[key] == inside
        for outside in (kind.minimum - 1, kind.maximum + 1):
            with pytest.raises(ApiError):
                parse(key, outside)
            with pytest.raises(ConfigError) as info:
                apply_patch(Policy(), _nested(key, outside))
            assert info.value.key == key


def test_the_scheduling_keys_in_the_openapi_schema() -> None:
    schema = policy_request_schema()
    batch = _at(schema, "scheduler.max_batch")
    assert (batch["type"], batch["minimum"], batch["maximum"], batch["default"]) == (
        "integer", 1, 16, 8)
    assert _at(schema, "scheduler.max_queue")["maximum"] == 4096
    budget = _at(schema, "scheduler.tpot_budget_ms")
    assert (budget["type"], budget["minimum"], budget["maximum"]) == ("number", 1.0, 60000.0)
    assert _at(schema, "speculation.enabled")["type"] == "boolean"
    assert _at(schema, "speculation.max_draft")["maximum"] == 64


def test_every_profile_keeps_the_scheduler_and_speculation_defaults() -> None:
    for name, bundle in PROFILE_POLICIES.items():
        assert bundle.speculation == Policy().speculation, name
        assert (bundle.scheduler.max_batch, bundle.scheduler.max_queue,
                bundle.scheduler.tpot_budget_ms) == (8, 32, 100.0), name
    tuned = apply_patch(Policy(), {"scheduler": {"max_batch": 2}, "speculation": {
        "enabled": False}})
    aggressive = apply_patch(tuned, {"profile": "aggressive", "speculation": {"max_draft": 4}})
    # a profile is a starting point: it brings its bundle, then the fields given
    assert aggressive.scheduler.max_batch == 8 and aggressive.speculation.enabled is True
    assert aggressive.speculation.max_draft == 4
