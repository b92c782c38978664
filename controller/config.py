"""Loading the configuration: a YAML file, then ``INFEROS_<PATH>`` environment overrides,
then CLI flags, into one frozen value, all or nothing.

Every key is declared in ``SCHEMA`` with its type and default. An unknown key, a wrong type
or a bad value raises ``ConfigError`` naming the key (``upstream.idle_timeout_s``) and, for
the YAML file, its line. The seed's ``infer_os:`` section becomes the starting ``Policy``
(its profile, then the keys given); ``profiles:`` adjusts the named bundles.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inferos.controller.controller import ControllerSettings
from inferos.controller.failsafe import FailsafeSettings
from inferos.controller.policy import Policy
from inferos.errors import ConfigError
from inferos.proxy import settings as proxy_defaults
from inferos.proxy.settings import HostPort, ProxySettings, normalize_upstream


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _positive_float_or_none(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    number = float(value)
    if number <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return number


def _positive_float(value: Any) -> float:
    number = _positive_float_or_none(value)
    if number is None:
        raise ValueError("a value is required")
    return number


_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2,
          "GB": 1000**3}


def byte_size(value: Any) -> int:
    """``64MiB``, ``4096 MiB``, ``1GB`` or a plain integer number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGIB")
        unit = text[len(digits):]
        if unit not in _UNITS or not digits:
            raise ValueError(f"expected a size such as 64MiB, got {value!r}")
        number = int(float(digits) * _UNITS[unit])
    if number <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return number


def _optional_upstream(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return normalize_upstream(str(value))


def _host_port(value: Any) -> HostPort:
    return HostPort.parse(str(value))


@dataclass(frozen=True, slots=True)
class Key:
    parse: Callable[[Any], Any]
    default: Any
    env: tuple[str, ...] = ()  # extra environment names besides INFEROS_<PATH>


SCHEMA: dict[str, Key] = {
    "listen.proxy": Key(_host_port, HostPort.parse(proxy_defaults.DEFAULT_LISTEN),
                        ("INFEROS_LISTEN",)),
    "listen.admin": Key(_host_port, HostPort.parse(proxy_defaults.DEFAULT_ADMIN),
                        ("INFEROS_ADMIN",)),
    "upstream.url": Key(_optional_upstream, None, ("INFEROS_UPSTREAM",)),
    "upstream.connect_timeout_s": Key(_positive_float, proxy_defaults.DEFAULT_CONNECT_TIMEOUT_S),
    "upstream.idle_timeout_s": Key(_positive_float_or_none, proxy_defaults.DEFAULT_IDLE_TIMEOUT_S),
    "upstream.total_timeout_s": Key(_positive_float_or_none, None),
    "upstream.max_body_bytes": Key(byte_size, proxy_defaults.DEFAULT_MAX_BODY_BYTES),
    "passthrough": Key(_bool, False),
}


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
    number = int(value)
    if number < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _policy_keys() -> dict[str, Key]:
    """One key per leaf of ``Policy``; None = keep what the profile sets."""
    from inferos.controller.policy import Policy

    keys: dict[str, Key] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, path + ".")
            elif path.endswith("_bytes"):
                keys[path] = Key(byte_size, None)
            elif isinstance(value, bool):
                keys[path] = Key(_bool, None)
            elif isinstance(value, int) or path in ("infer_os.backend.ctx_size",
                                                    "infer_os.backend.threads"):
                keys[path] = Key(_int, None)
            elif isinstance(value, float):
                keys[path] = Key(_float, None)
            else:
                keys[path] = Key(_str, None)

    walk(Policy(), "infer_os.")
    return keys


SCHEMA.update(_policy_keys())
SCHEMA.update({
    "infer_os.loops.fast_ms": Key(_positive_float, 1.0),
    "infer_os.loops.mid_ms": Key(_positive_float, 10.0),
    "infer_os.loops.slow_ms": Key(_positive_float, 100.0),
    "infer_os.telemetry.push_interval_ms": Key(_positive_float, 1000.0),
    "infer_os.telemetry.dir": Key(_str, "logs"),
    "infer_os.failsafe.stale_after_ms": Key(_positive_float, 250.0),
    "infer_os.failsafe.recover_after_s": Key(_positive_float, 5.0),
    "infer_os.decisions.every_s": Key(_positive_float, 10.0),
    "infer_os.decisions.cooldown_s": Key(_positive_float_or_none, 30.0),
    # The backend Infer-OS runs itself when no upstream is given: the embedded engine on a
    # prepared model, or llama.cpp's server on a GGUF file.
    "engine.backend": Key(_str, "engine"),
    "engine.model": Key(_str, None, ("INFEROS_MODEL",)),
    "engine.precision": Key(_str, "fp32"),
})
# Sections read whole: named adjustments to the profiles.
OPEN_SECTIONS = ("profiles",)


def env_name(path: str) -> str:
    return "INFEROS_" + path.upper().replace(".", "_")


@dataclass(frozen=True, slots=True)
class Config:
    values: Mapping[str, Any]
    sections: Mapping[str, Any]
    start_policy: Policy
    profiles: Mapping[str, Policy]

    def get(self, path: str) -> Any:
        return self.values[path]

    def policy(self) -> Policy:
        return self.start_policy

    def controller_settings(self) -> ControllerSettings:
        v = self.values
        cooldown = v["infer_os.decisions.cooldown_s"]
        return ControllerSettings(
            fast_s=v["infer_os.loops.fast_ms"] / 1000, mid_s=v["infer_os.loops.mid_ms"] / 1000,
            slow_s=v["infer_os.loops.slow_ms"] / 1000,
            telemetry_s=v["infer_os.telemetry.push_interval_ms"] / 1000,
            telemetry_dir=Path(v["infer_os.telemetry.dir"]),
            decide_every_s=v["infer_os.decisions.every_s"],
            reconfigure_cooldown_s=0.0 if cooldown is None else cooldown,
            failsafe=FailsafeSettings(stale_after_s=v["infer_os.failsafe.stale_after_ms"] / 1000,
                                      recover_after_s=v["infer_os.failsafe.recover_after_s"]))

    def proxy_settings(self, upstream: str) -> ProxySettings:
        return ProxySettings(
            upstream=upstream,
            listen=self.values["listen.proxy"],
            admin=self.values["listen.admin"],
            passthrough=self.values["passthrough"],
            connect_timeout_s=self.values["upstream.connect_timeout_s"],
            idle_timeout_s=self.values["upstream.idle_timeout_s"],
            total_timeout_s=self.values["upstream.total_timeout_s"],
            max_body_bytes=self.values["upstream.max_body_bytes"],
        )


def _flatten(node: yaml.Node, prefix: str, out: dict[str, tuple[Any, int]],
             sections: dict[str, Any]) -> None:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("expected a mapping", key=prefix or "(top level)",
                          line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        path = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if not prefix and key_node.value in OPEN_SECTIONS:
            sections[key_node.value] = yaml.safe_load(yaml.serialize(value_node))
        elif path in SCHEMA:
            out[path] = (yaml.safe_load(yaml.serialize(value_node)), line)
        elif any(k.startswith(path + ".") for k in SCHEMA):
            _flatten(value_node, path + ".", out, sections)
        else:
            raise ConfigError("unknown key", key=path, line=line)


def read_yaml(text: str) -> tuple[dict[str, tuple[Any, int]], dict[str, Any]]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                          line=mark.line + 1 if mark else None) from exc
    raw: dict[str, tuple[Any, int]] = {}
    sections: dict[str, Any] = {}
    if root is not None:
        _flatten(root, "", raw, sections)
    return raw, sections


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """File, then environment, then ``overrides`` (CLI flags); None overrides are ignored."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, int | None]] = {}
    sections: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        file_values, sections = read_yaml(text)
        raw.update(file_values)
    for key, spec in SCHEMA.items():
        for name in (env_name(key), *spec.env):
            if name in env:
                raw[key] = (env[name], None)
    for key, value in (overrides or {}).items():
        if key not in SCHEMA:
            raise ConfigError("unknown key", key=key)
        if value is not None:
            raw[key] = (value, None)

    values: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        if key not in raw:
            values[key] = spec.default
            continue
        value, line = raw[key]
        try:
            values[key] = spec.parse(value)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=key, line=line) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc), key=key, line=line) from exc
    profiles = _build_profiles(sections)
    return Config(values=values, sections=sections, profiles=profiles,
                  start_policy=_build_policy(values, profiles, raw))


def _line(raw: Mapping[str, tuple[Any, int | None]], key: str) -> int | None:
    best = None
    for path, (_, line) in raw.items():
        if path == key or path.startswith(key + "."):
            best = line if best is None else min(best, line or best)
    return best


def _nest(flat: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        if value is None or not path.startswith(prefix):
            continue
        node = out
        *parents, leaf = path[len(prefix):].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _build_profiles(sections: Mapping[str, Any]) -> dict[str, Policy]:
    from inferos.controller.policy import apply_patch
    from inferos.controller.profiles import PROFILE_POLICIES

    changes = sections.get("profiles") or {}
    if not isinstance(changes, dict):
        raise ConfigError("expected a mapping of profile names", key="profiles")
    profiles = dict(PROFILE_POLICIES)
    for name, patch in changes.items():
        if name not in PROFILE_POLICIES:
            raise ConfigError("unknown profile", key=f"profiles.{name}")
        try:
            profiles[name] = apply_patch(PROFILE_POLICIES[name], patch)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=f"profiles.{name}.{exc.key}") from exc
    return profiles


def _build_policy(values: Mapping[str, Any], profiles: Mapping[str, Policy],
                  raw: Mapping[str, tuple[Any, int | None]]) -> Policy:
    from inferos.controller.policy import apply_patch

    name = values["infer_os.profile"] or "balanced"
    patch = _nest({k: v for k, v in values.items() if k.count(".") >= 2
                   or k in ("infer_os.mode",)}, "infer_os.")
    for section in ("loops", "telemetry", "failsafe", "decisions"):
        patch.pop(section, None)
    try:
        if name not in profiles:
            raise ConfigError(f"must be one of {', '.join(profiles)}", key="profile")
        return apply_patch(profiles[name], patch, profiles)
    except ConfigError as exc:
        key = f"infer_os.{exc.key}"
        raise ConfigError(exc.reason, key=key, line=_line(raw, key)) from exc
