from __future__ import annotations

from pathlib import Path

from inferos.controller.controller import ControllerSettings
from inferos.controller.decisions import DecisionSettings
from inferos.controller.policy import Policy
from inferos.controller.profiles import profile_policy
from inferos.proxy.settings import HostPort, ProxySettings


def proxy_settings(upstream: str = "") -> ProxySettings:
    return ProxySettings(upstream=upstream, listen=HostPort("127.0.0.1", 0),
                         admin=HostPort("127.0.0.1", 0))


def controller_settings(tmp_path: Path, **overrides: object) -> ControllerSettings:
    from inferos.controller.failsafe import FailsafeSettings

    # The default staleness bound, as users run it: the fail-safe tells a hung controller
    # from a busy machine, so tests that share two cores with model servers must not trip
    # it falsely (a false trip fails them: their requests would go unobserved).
    values: dict[str, object] = {"telemetry_dir": tmp_path / "logs",
                                 "reconfigure_cooldown_s": 0.0, "recover_after_s": 1.0,
                                 "stale_after_s": FailsafeSettings().stale_after_s}
    values.update(overrides)
    failsafe = FailsafeSettings(recover_after_s=float(values.pop("recover_after_s")),  # type: ignore[arg-type]
                                stale_after_s=float(values.pop("stale_after_s")))  # type: ignore[arg-type]
    decisions = values.pop("decisions", DecisionSettings())
    return ControllerSettings(failsafe=failsafe, decisions=decisions,  # type: ignore[arg-type]
                              **values)  # type: ignore[arg-type]


def quick_decisions(**overrides: object) -> DecisionSettings:
    """Evidence rules scaled down so a test reaches them in seconds, not minutes."""
    values: dict[str, object] = {"min_requests": 3, "min_span_s": 0.5, "window_s": 120.0}
    values.update(overrides)
    return DecisionSettings(**values)  # type: ignore[arg-type]


def policy(profile: str = "safe") -> Policy:
    return profile_policy(profile)
