"""Per policy key: applied (where, and verified) or not, and why — never silent.

The report is what ``/v1/health`` shows under ``policy_status`` and what ``POST /v1/policy``
answers. Its statuses:

- ``applied``: in effect, read back from where it acts (the proxy, the engine's
  acknowledgement, the backend's own report after a reload or restart);
- ``not_applicable``: this backend has no such setting (the reason says why);
- ``not_applied``: it could have been, but is not in effect (a failed or unverifiable
  change, a decision not to pay a reload for it, a client's own choice);
- ``pending``: asked for and on its way (a reconfiguration or acknowledgement pending).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from inferos.controller import backend as b
from inferos.controller.backend import BackendState, Capabilities, Outcome
from inferos.controller.policy import Policy, flatten
from inferos.controller.snapshot import ModeSwitch

# Keys whose answer is a fact of the backend kind, not something sent to it.
STATIC_KEYS = ("io.enable_iobinding", "io.dml_pool_bytes")
# What the proxy and controller apply themselves.
OWN_KEYS = ("mode", "profile")


def live_keys(policy: Policy, switch: ModeSwitch | None = None) -> dict[str, Any]:
    """The live keys to send: the policy's, with the controller's mode switch if any."""
    flat = flatten(policy)
    live = {k: flat[k] for k in b.LIVE_KEYS}
    if switch is not None:
        live["scheduler.mode"] = switch.mode
    return live


def _switched(key: str, value: Any, sent: Outcome | None, switch: ModeSwitch) -> Outcome:
    """``scheduler.mode`` while the controller runs another mode than the policy's."""
    if sent is None or sent.value != switch.mode:
        return Outcome(key, b.PENDING, value, sent.in_effect if sent else None,
                       sent.where if sent else None,
                       f"the controller switched to {switch.mode} ({switch.reason}); sent "
                       "to the engine, waiting for its acknowledgement")
    if sent.status != b.APPLIED:
        return dataclasses.replace(sent, value=value)
    return Outcome(key, b.NOT_APPLIED, value, sent.in_effect, sent.where,
                   f"the controller runs {switch.mode} instead: {switch.reason}; "
                   f"{value} comes back when that clears")


def _static(key: str, value: Any, kind: str) -> Outcome:
    if kind != "engine":
        return Outcome(key, b.NOT_APPLICABLE, value,
                       reason=f"{kind} has no ONNX Runtime IOBinding or DirectML pool")
    if key == "io.enable_iobinding":
        if value:
            return Outcome(key, b.APPLIED, value, True, "engine",
                           "the engine always binds its KV buffers through IOBinding")
        return Outcome(key, b.NOT_APPLICABLE, value, True,
                       reason="the engine always binds its KV through IOBinding (its KV "
                              "cache is built on it); it cannot be turned off")
    return Outcome(key, b.NOT_APPLICABLE, value,
                   reason="no DirectML execution provider here: the engine's KV lives in "
                          "host memory (io.host_pool_bytes)")


def build(policy: Policy, passthrough: bool, caps: Capabilities | None,
          state: BackendState | None, restart: Mapping[str, Outcome],
          live: Mapping[str, Outcome], switch: ModeSwitch | None = None
          ) -> dict[str, dict[str, Any]]:
    flat = flatten(policy)
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "mode":
            in_effect = "passthrough" if passthrough else "optimize"
            status = b.APPLIED if in_effect == value else b.NOT_APPLIED
            reason = "" if status == b.APPLIED else "the fail-safe holds the proxy in " \
                                                    "passthrough"
            out[key] = Outcome(key, status, value, in_effect, "proxy", reason).as_dict()
            continue
        if key == "profile":
            out[key] = Outcome(key, b.APPLIED, value, value, "controller",
                               "a bundle of the keys below; each is reported itself").as_dict()
            continue
        if caps is None:
            out[key] = Outcome(key, b.NOT_APPLIED, value,
                               reason="no backend, or its capabilities are not known yet "
                                      "(unreachable)").as_dict()
            continue
        if key in STATIC_KEYS:
            out[key] = _static(key, value, caps.kind).as_dict()
            continue
        capability = caps.of(key)
        if not capability.applicable:
            out[key] = Outcome(key, b.NOT_APPLICABLE, value, reason=capability.reason).as_dict()
        elif key == "scheduler.mode" and switch is not None:
            out[key] = _switched(key, value, live.get(key), switch).as_dict()
        elif key in live:
            outcome = live[key]
            # Decisions publish new versions without touching live keys: what counts is
            # whether the value the engine acknowledged is the one asked for now.
            if outcome.value != value:
                outcome = Outcome(key, b.PENDING, value, outcome.in_effect, outcome.where,
                                  "sent to the engine; waiting for its acknowledgement")
            out[key] = outcome.as_dict()
        elif key in b.RESTART_KEYS:
            out[key] = _restart_status(key, value, capability.how, state, restart).as_dict()
        else:
            out[key] = Outcome(key, b.PENDING, value, reason="not sent yet").as_dict()
    return out


def _restart_status(key: str, value: Any, how: str | None, state: BackendState | None,
                    restart: Mapping[str, Outcome]) -> Outcome:
    name = b.RESTART_KEYS[key]
    in_effect = state.settings.get(name) if state is not None else None
    where = "/load" if how == b.RELOAD else "blue/green restart"
    if value is None:  # not pinned: decided by the controller
        return Outcome(key, b.APPLIED, None, in_effect, "decided by the controller",
                       "not pinned; the value in effect is the backend's, read back"
                       if in_effect is not None else "not pinned; the backend does not "
                                                     "report its value")
    if in_effect == value:
        return Outcome(key, b.APPLIED, value, in_effect, where, "read back from the backend")
    last = restart.get(key)
    if last is not None and last.value == value:
        return last
    return Outcome(key, b.PENDING, value, in_effect, where,
                   "asked; the controller applies it at its next decision")
