"""Configuration loads all or nothing, and its errors name the key (and the YAML line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferos.controller.config import load_config
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
