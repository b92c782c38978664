"""Configuration loads all or nothing, and its errors name the key (and the YAML line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferos.controller.config import SCHEMA, load_config
from inferos.controller.policy import flatten
from inferos.controller.profiles import PROFILE_POLICIES
from inferos.controller.setting_table import SETTINGS, Setting
from inferos.controller.setting_types import (
    Address,
    Bool,
    ByteSize,
    Choice,
    Float,
    Int,
    TextList,
    Url,
)
from inferos.errors import ConfigError
from inferos.proxy.settings import HostPort


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inferos.yaml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = _write(tmp_path, """
listen: {proxy: "127.0.0.1:9100", admin: "127.0.0.1:9101"}
upstream:
  url: http://127.0.0.1:13305
  idle_timeout_s: 30
  max_body_bytes: 1MiB
infer_os:
  kv: {recent_window: 64}
""")
    config = load_config(path, env={"INFEROS_UPSTREAM_IDLE_TIMEOUT_S": "45"},
                         overrides={"listen.proxy": "127.0.0.1:9200", "upstream.url": None})
    assert config.get("listen.proxy") == HostPort("127.0.0.1", 9200)
    assert config.get("listen.admin") == HostPort("127.0.0.1", 9101)
    assert config.get("upstream.url") == "http://127.0.0.1:13305"
    assert config.get("upstream.idle_timeout_s") == 45.0
    assert config.get("upstream.max_body_bytes") == 1024 * 1024
    assert config.policy().kv.recent_window == 64
    settings = config.proxy_settings("http://x:1")
    assert settings.idle_timeout_s == 45.0 and settings.listen.port == 9200


def test_defaults_listen_on_loopback_only() -> None:
    config = load_config(None, env={})
    assert config.get("listen.proxy") == HostPort("127.0.0.1", 8020)
    assert config.get("listen.admin") == HostPort("127.0.0.1", 8021)
    assert config.get("upstream.idle_timeout_s") == 600.0
    assert config.get("passthrough") is False


def test_passthrough_from_environment() -> None:
    assert load_config(None, env={"INFEROS_PASSTHROUGH": "1"}).get("passthrough") is True
    assert load_config(None, env={"INFEROS_UPSTREAM": "http://h:1/"}).get(
        "upstream.url") == "http://h:1"


@pytest.mark.parametrize(("text", "key", "line"), [
    ("upstream:\n  url: http://a:1\n  idle_timeout: 5\n", "upstream.idle_timeout", 3),
    ("listen:\n  proxy: nonsense\n", "listen.proxy", 2),
    ("upstream:\n  max_body_bytes: lots\n", "upstream.max_body_bytes", 2),
    ("upstream:\n  url: ftp://x\n", "upstream.url", 2),
    ("passthrough: maybe\n", "passthrough", 1),
    ("\n\nbogus: 1\n", "bogus", 3),
])
def test_errors_name_the_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env={})
    assert info.value.key == key and info.value.line == line
    assert key in str(info.value) and f"line {line}" in str(info.value)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "listen:\n  proxy: [unclosed\n"), env={})
    assert info.value.line is not None


def test_bad_environment_override_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"INFEROS_UPSTREAM_CONNECT_TIMEOUT_S": "-1"})
    assert info.value.key == "upstream.connect_timeout_s"


SEED = """
infer_os:
  quality: {max_delta_ppl: 0.5, min_accept_rate: 0.5}
  kv: {recent_window: 64, sink_tokens: 4,
       level_thresholds: {L1_int8: 0.7, L2_int4: 0.5, L3_evict: 0.3}}
  io: {enable_iobinding: true, dml_pool_bytes: 2048MiB, host_pool_bytes: 4096MiB}
  scheduler: {mode: hybrid, prefill_device: dml, decode_device: npu}
  loops: {fast_ms: 1, mid_ms: 10, slow_ms: 100}
  telemetry: {push_interval_ms: 1000, dir: logs}
"""


def test_the_seeds_schema_loads_into_policy_and_controller_settings(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, SEED + "  profile: aggressive\n"), env={})
    policy = config.policy()
    assert policy.profile == "aggressive" and policy.kv.cache_type == "q4_0"
    assert policy.kv.recent_window == 64  # the file's value over the profile's 32
    assert policy.io.host_pool_bytes == 4096 * 2**20
    assert policy.scheduler.decode_device == "npu"
    settings = config.controller_settings()
    assert (settings.fast_s, settings.mid_s, settings.slow_s) == (0.001, 0.01, 0.1)
    assert settings.telemetry_s == 1.0 and str(settings.telemetry_dir) == "logs"


def test_policy_errors_in_the_file_name_the_key_and_line(tmp_path: Path) -> None:
    text = "infer_os:\n  kv:\n    level_thresholds: {L1_int8: 0.1}\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env={})
    assert info.value.key == "infer_os.kv.level_thresholds" and info.value.line == 3
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "infer_os:\n  scheduler: {mode: warp}\n"), env={})
    assert info.value.key == "infer_os.scheduler.mode" and info.value.line == 2
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"INFEROS_INFER_OS_KV_RECENT_WINDOW": "lots"})
    assert info.value.key == "infer_os.kv.recent_window"


def test_environment_overrides_reach_the_policy() -> None:
    config = load_config(None, env={"INFEROS_INFER_OS_KV_RECENT_WINDOW": "128",
                                    "INFEROS_INFER_OS_PROFILE": "safe"})
    assert config.policy().kv.recent_window == 128 and config.policy().profile == "safe"


def test_profiles_section_adjusts_a_bundle_and_rejects_unknown_ones(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "profiles:\n  safe: {kv: {recent_window: 512}}\n"
                                          "infer_os: {profile: safe}\n"), env={})
    assert config.policy().kv.recent_window == 512
    assert config.profiles["safe"].kv.recent_window == 512
    assert load_config(None, env={}).profiles["safe"].kv.recent_window == 256  # built-in kept
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "profiles:\n  turbo: {}\n"), env={})
    assert info.value.key == "profiles.turbo"


def _env_text(setting: Setting) -> tuple[str, object]:
    """A non-default value for ``setting`` as an environment string, and its parsed value."""
    kind = setting.kind
    if isinstance(kind, Int):
        return str(kind.minimum), kind.minimum
    if isinstance(kind, Float):  # a nudge keeps the thresholds ordered
        number = (setting.default or 1.0) + 0.01
        return str(number), number
    if isinstance(kind, Bool):
        return ("no", False) if setting.default else ("yes", True)
    if isinstance(kind, Choice):
        other = [c for c in kind.choices if c != setting.default][0]
        return other, other
    if isinstance(kind, ByteSize):
        return "3 MiB", 3 * 2**20
    if isinstance(kind, Address):
        return "127.0.0.1:9999", HostPort("127.0.0.1", 9999)
    if isinstance(kind, Url):
        return "http://h:1/", "http://h:1"
    if isinstance(kind, TextList):  # comma-separated in the environment
        return "/a/*, /b", ("/a/*", "/b")
    return "cpu", "cpu"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.path)
def test_every_declared_setting_loads_from_each_environment_name(setting: Setting) -> None:
    text, value = _env_text(setting)
    for name in setting.env_names:
        config = load_config(None, env={name: text})
        assert config.get(setting.path) == value, name
        if setting.policy:
            assert flatten(config.policy())[setting.key] == value, name


def test_unset_policy_keys_leave_the_profile_alone() -> None:
    assert all(SCHEMA[s.path].default is None for s in SETTINGS if s.policy)
    assert all(SCHEMA[s.path].default == s.default for s in SETTINGS if not s.policy)
    config = load_config(None, env={})
    assert config.get("infer_os.kv.cache_type") is None
    assert config.policy() == PROFILE_POLICIES["balanced"]


@pytest.mark.parametrize(("text", "key", "line"), [
    ("infer_os:\n  kv:\n    recent_window: 0\n", "infer_os.kv.recent_window", 3),
    ("infer_os:\n  kv: {recent_window: 2000000}\n", "infer_os.kv.recent_window", 2),
    ("infer_os:\n  io: {host_pool_bytes: -1}\n", "infer_os.io.host_pool_bytes", 2),
    ("infer_os:\n\n  backend: {ctx_size: 100}\n", "infer_os.backend.ctx_size", 3),
    ("infer_os:\n  kv: {level_thresholds: {L2_int4: 1.5}}\n",
     "infer_os.kv.level_thresholds.L2_int4", 2),
    ("infer_os:\n  kv: {recent_window: 1.5}\n", "infer_os.kv.recent_window", 2),
    ("engine: {backend: vllm}\n", "engine.backend", 1),
])
def test_values_out_of_bounds_in_the_file_name_the_key_and_line(
        tmp_path: Path, text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env={})
    assert info.value.key == key and info.value.line == line


def test_the_failsafe_bound_declared_is_the_one_the_failsafe_defaults_to() -> None:
    from inferos.controller.failsafe import FailsafeSettings
    from inferos.controller.setting_table import BY_PATH

    declared = BY_PATH["infer_os.failsafe.stale_after_ms"].default
    assert declared / 1000 == FailsafeSettings().stale_after_s


SCHEDULING = """
infer_os:
  scheduler: {max_batch: 4, max_queue: 0, tpot_budget_ms: 250}
  speculation: {enabled: false, max_draft: 16}
"""


def test_the_scheduling_settings_load_from_the_file_then_the_environment(
        tmp_path: Path) -> None:
    path = _write(tmp_path, SCHEDULING)
    policy = load_config(path, env={}).policy()
    assert (policy.scheduler.max_batch, policy.scheduler.max_queue,
            policy.scheduler.tpot_budget_ms) == (4, 0, 250.0)
    assert (policy.speculation.enabled, policy.speculation.max_draft) == (False, 16)
    overridden = load_config(path, env={"INFEROS_INFER_OS_SCHEDULER_MAX_BATCH": "2",
                                        "INFEROS_INFER_OS_SPECULATION_ENABLED": "yes",
                                        "INFEROS_INFER_OS_SCHEDULER_TPOT_BUDGET_MS": "50"}
                             ).policy()
    assert overridden.scheduler.max_batch == 2 and overridden.speculation.enabled is True
    assert overridden.scheduler.tpot_budget_ms == 50.0
    assert overridden.speculation.max_draft == 16 and overridden.scheduler.max_queue == 0
    default = load_config(None, env={}).policy()
    assert (default.scheduler.max_batch, default.scheduler.max_queue,
            default.scheduler.tpot_budget_ms, default.speculation.enabled,
            default.speculation.max_draft) == (8, 32, 100.0, True, 8)


@pytest.mark.parametrize(("text", "key", "line"), [
    ("infer_os:\n  scheduler:\n    max_batch: 17\n", "infer_os.scheduler.max_batch", 3),
    ("infer_os:\n  scheduler: {max_queue: -1}\n", "infer_os.scheduler.max_queue", 2),
    ("infer_os:\n  scheduler: {tpot_budget_ms: 0.5}\n", "infer_os.scheduler.tpot_budget_ms", 2),
    ("infer_os:\n  speculation: {enabled: maybe}\n", "infer_os.speculation.enabled", 2),
    ("infer_os:\n\n  speculation:\n    max_draft: 65\n", "infer_os.speculation.max_draft", 4),
    ("infer_os:\n  speculation: {draft: 4}\n", "infer_os.speculation.draft", 2),
])
def test_bad_scheduling_settings_name_the_key_and_line(tmp_path: Path, text: str, key: str,
                                                        line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env={})
    assert info.value.key == key and info.value.line == line


def test_a_bad_scheduling_environment_override_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"INFEROS_INFER_OS_SPECULATION_MAX_DRAFT": "0"})
    assert info.value.key == "infer_os.speculation.max_draft"
