"""Loading the configuration: a YAML file, then ``INFEROS_<PATH>`` environment overrides,
then CLI flags, into one frozen value, all or nothing.

Every key is declared once, in ``setting_table.SETTINGS``; ``SCHEMA`` is derived from it
(parser, default, environment names). An unknown key, a wrong type
or a bad value raises ``ConfigError`` naming the key (``upstream.idle_timeout_s``) and, for
the YAML file, its line. The seed's ``infer_os:`` section becomes the starting ``Policy``
(its profile, then the keys given); ``profiles:`` adjusts the named bundles.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from inferos.controller.policy import Policy
from inferos.controller.setting_table import POLICY_SETTINGS, SETTINGS, Setting, env_name
from inferos.controller.setting_types import byte_size
from inferos.errors import ConfigError

if TYPE_CHECKING:
    # Imported where used: loading a file needs neither the controller nor the proxy.
    from inferos.controller.controller import ControllerSettings
    from inferos.proxy.settings import ProxySettings

__all__ = ["SCHEMA", "Config", "Key", "byte_size", "env_name", "load_config", "read_yaml"]


@dataclass(frozen=True, slots=True)
class Key:
    """How the loader reads one setting (derived from its declaration)."""

    parse: Callable[[Any], Any]
    default: Any
    env: tuple[str, ...] = ()  # extra environment names besides INFEROS_<PATH>


def _key(setting: Setting) -> Key:
    # A policy key left out is None: "what the profile sets", not the declared default.
    return Key(functools.partial(setting.parse, strict=False),
               None if setting.policy else setting.default, setting.env)


SCHEMA: dict[str, Key] = {s.path: _key(s) for s in SETTINGS}
# Sections read whole: named adjustments to the profiles.
OPEN_SECTIONS = ("profiles",)


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
        from inferos.controller.controller import ControllerSettings
        from inferos.controller.decisions import DecisionSettings
        from inferos.controller.failsafe import FailsafeSettings
        from inferos.controller.liveness import LivenessSettings

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
                                      recover_after_s=v["infer_os.failsafe.recover_after_s"]),
            decisions=DecisionSettings(
                min_requests=v["infer_os.decisions.min_requests"],
                min_span_s=v["infer_os.decisions.min_span_s"],
                client_backoff_s=v["infer_os.decisions.client_backoff_s"]),
            liveness=LivenessSettings(interval_s=v["upstream.liveness.interval_s"],
                                      timeout_s=v["upstream.liveness.timeout_s"],
                                      failures=v["upstream.liveness.failures"],
                                      wait_s=v["upstream.liveness.wait_s"]))

    def proxy_settings(self, upstream: str) -> ProxySettings:
        from inferos.proxy.connection_limits import ConnectionSettings
        from inferos.proxy.settings import ProxySettings

        return ProxySettings(
            upstream=upstream,
            listen=self.values["listen.proxy"],
            admin=self.values["listen.admin"],
            passthrough=self.values["passthrough"],
            connect_timeout_s=self.values["upstream.connect_timeout_s"],
            idle_timeout_s=self.values["upstream.idle_timeout_s"],
            total_timeout_s=self.values["upstream.total_timeout_s"],
            max_body_bytes=self.values["upstream.max_body_bytes"],
            allowed_hosts=self.values["listen.allowed_hosts"],
            deny_paths=self.values["proxy.deny_paths"],
            connections=ConnectionSettings(
                header_timeout_s=self.values["listen.header_timeout_s"],
                keepalive_timeout_s=self.values["listen.keepalive_timeout_s"],
                max_connections=self.values["listen.max_connections"]),
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


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings; None (not given) left out."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, leaf = path.split(".")
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

    name = values["infer_os.profile"] or POLICY_SETTINGS["profile"].default
    patch = _nest({key: values[s.path] for key, s in POLICY_SETTINGS.items()
                   if key != "profile"})
    try:
        if name not in profiles:
            raise ConfigError(f"must be one of {', '.join(profiles)}", key="profile")
        return apply_patch(profiles[name], patch, profiles)
    except ConfigError as exc:
        key = f"infer_os.{exc.key}"
        raise ConfigError(exc.reason, key=key, line=_line(raw, key)) from exc
