from __future__ import annotations

from pathlib import Path

from inferos.controller.controller import ControllerSettings
from inferos.controller.decisions import Observed, decide
from inferos.controller.policy import Policy
from inferos.controller.profiles import profile_policy
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.settings import HostPort, ProxySettings


def proxy_settings(upstream: str = "") -> ProxySettings:
    return ProxySettings(upstream=upstream, listen=HostPort("127.0.0.1", 0),
                         admin=HostPort("127.0.0.1", 0))


def controller_settings(tmp_path: Path, **overrides: object) -> ControllerSettings:
    values: dict[str, object] = {"telemetry_dir": tmp_path / "logs",
                                 "reconfigure_cooldown_s": 0.0, "recover_after_s": 1.0,
                                 "stale_after_s": 1.0}
    values.update(overrides)
    from inferos.controller.failsafe import FailsafeSettings
    # Tests share two cores with a model server: a generous staleness bound keeps a busy
    # machine from tripping the fail-safe in tests that are not about it.
    failsafe = FailsafeSettings(recover_after_s=float(values.pop("recover_after_s")),  # type: ignore[arg-type]
                                stale_after_s=float(values.pop("stale_after_s")))  # type: ignore[arg-type]
    return ControllerSettings(failsafe=failsafe, **values)  # type: ignore[arg-type]


def initial_settings(policy: Policy, ctx_size: int = 2048) -> BackendSettings:
    empty = Observed(stats=None, longest_request_tokens=None, memory_pressure=False,
                     quality_budget=None)
    return decide(BackendSettings(ctx_size=ctx_size), policy, empty).settings


def policy(profile: str = "safe") -> Policy:
    return profile_policy(profile)
