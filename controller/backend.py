"""The backend seam: one protocol for every kind of backend the controller tunes.

Three kinds sit behind it: a Lemonade server (or anything speaking its API) reconfigured
through its own ``/load`` (``lemonade_backend.py``), and a process Infer-OS runs itself,
the embedded engine or llama.cpp's server, switched blue/green (``managed_backend.py``).

The protocol says only what is true of the backend in front of us:

- ``read_back()`` gives what is loaded now and its ``capabilities``, both from one read:
  *detected from the backend itself* (its version and the fields of its health), per
  policy key: applied live, by a reload, by a restart, or not applicable
  with the reason. The Python Lemonade's ``/load`` takes only ``model_name``: there every
  backend setting is not applicable, and nothing is ever sent to change it.
- ``apply()`` returns one ``Outcome`` per key it was asked to change, and an outcome says
  ``applied`` only after the value was *read back* from the backend (Lemonade's
  ``all_models_loaded[].recipe_options``, the engine's health and stats, the llama.cpp
  process's own command line). What could not be read back is ``not_applied``.
  The controller re-reads right before acting, so it never acts on a stale name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from inferos.controller.snapshot import BackendSettings
from inferos.errors import InferOSError
from inferos.proxy.data_plane import DataPlane

LIVE = "live"          # no restart: the running backend takes it (the engine's control API)
RELOAD = "reload"      # the backend reloads the model in place (Lemonade /load): downtime
RESTART = "restart"    # a new process, blue/green: no downtime, a second process meanwhile

APPLIED = "applied"
NOT_APPLIED = "not_applied"
NOT_APPLICABLE = "not_applicable"
PENDING = "pending"

# The policy keys that become backend settings needing a reload or a new process; the
# rest of a backend's keys (KV window, thresholds, pools, guard, scheduler, speculation)
# are live.
RESTART_KEYS = {
    "backend.ctx_size": "ctx_size",
    "kv.cache_type": "cache_type",
    "backend.threads": "threads",
    "backend.provider": "provider",
}
# Live keys of the embedded engine's scheduler alone (batching, queue, time-per-token
# budget, speculation): the other kinds say why they have no such control.
SCHEDULING_KEYS = (
    "scheduler.max_batch", "scheduler.max_queue", "scheduler.tpot_budget_ms",
    "speculation.enabled", "speculation.max_draft",
)
LIVE_KEYS = (
    "kv.recent_window", "kv.sink_tokens", "kv.level_thresholds.L1_int8",
    "kv.level_thresholds.L2_int4", "kv.level_thresholds.L3_evict", "kv.allow_evict",
    "io.host_pool_bytes", "quality.max_delta_ppl", "quality.min_accept_rate",
    "scheduler.mode", "scheduler.prefill_device", "scheduler.decode_device",
    *SCHEDULING_KEYS,
)


class ActuatorError(InferOSError):
    """A reconfiguration failed; ``rolled_back`` says whether the last good one is back."""

    def __init__(self, message: str, *, rolled_back: bool) -> None:
        super().__init__(message)
        self.rolled_back = rolled_back


@dataclass(frozen=True, slots=True)
class Capability:
    how: str | None   # LIVE | RELOAD | RESTART, or None: not applicable here
    reason: str       # how it is applied and verified, or why it cannot be

    @property
    def applicable(self) -> bool:
        return self.how is not None


@dataclass(frozen=True, slots=True)
class Capabilities:
    kind: str                     # "lemonade-cpp" | "lemonade-python" | "engine" | "llamacpp"
    version: str | None
    keys: Mapping[str, Capability]

    def of(self, key: str) -> Capability:
        return self.keys.get(key, Capability(None, f"{self.kind} has no such setting"))

    def setting_applicable(self, setting: str) -> bool:
        """For a ``BackendSettings`` field name (ctx_size is always decided, never a key
        alone: it is applicable where backend.ctx_size is)."""
        for key, name in RESTART_KEYS.items():
            if name == setting:
                return self.of(key).applicable
        return False


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the backend says is in effect, read from it just now."""

    capabilities: Capabilities
    model: str | None                       # loaded model; None when none is
    settings: Mapping[str, Any]             # BackendSettings field -> value read back
    max_ctx: int | None = None              # the loaded model's maximum context
    live: Mapping[str, Any] = field(default_factory=dict)  # live policy key -> value
    live_version: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    key: str
    status: str                 # APPLIED | NOT_APPLIED | NOT_APPLICABLE | PENDING
    value: Any                  # what was asked
    in_effect: Any = None       # what the backend reported back (None: unknown)
    where: str | None = None    # "engine control API", "/load", "blue/green restart", ...
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "value": self.value, "in_effect": self.in_effect,
                "where": self.where, "reason": self.reason}


@runtime_checkable
class Backend(Protocol):
    name: str
    # How long the last reconfiguration took (reload or blue/green), once one happened:
    # the measured cost the next decision weighs.
    last_change_s: float | None

    async def start(self) -> str:
        """Starts a backend Infer-OS runs (or checks one it does not); returns its URL."""
        ...

    async def read_back(self) -> BackendState:
        """The backend's state and capabilities now, from one read (raises ActuatorError
        when it cannot be read)."""
        ...

    async def apply(self, wanted: BackendSettings, plane: DataPlane, *, model: str | None,
                    changes: tuple[str, ...]) -> tuple[Outcome, ...]:
        """Makes the ``changes`` (``BackendSettings`` field names) of ``wanted`` true of
        ``model``, the model the decision was taken for; one outcome per change. Refuses
        (every outcome ``not_applied``) when ``model`` is no longer the loaded one."""
        ...

    async def apply_live(self, live: Mapping[str, Any], version: int) -> tuple[Outcome, ...]:
        """Sends the live policy keys; one outcome per key (not_applicable where none)."""
        ...

    def exited(self) -> int | None:
        """The exit code of a process this backend runs that died unasked, else None."""
        ...

    async def restart(self) -> str:
        """Brings a died process back on its last good settings; returns its URL."""
        ...

    async def describe(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def live_payload(live: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The engine control API's body from flat live keys."""
    def get(key: str) -> Any:
        return live[key]

    return {
        "version": version,
        "kv": {"recent_window": get("kv.recent_window"), "sink_tokens": get("kv.sink_tokens"),
               "level_thresholds": {"L1_int8": get("kv.level_thresholds.L1_int8"),
                                    "L2_int4": get("kv.level_thresholds.L2_int4"),
                                    "L3_evict": get("kv.level_thresholds.L3_evict")},
               "allow_evict": get("kv.allow_evict")},
        "io": {"host_pool_bytes": get("io.host_pool_bytes")},
        "quality": {"max_delta_ppl": get("quality.max_delta_ppl"),
                    "min_accept_rate": get("quality.min_accept_rate")},
        "scheduler": {"mode": get("scheduler.mode"),
                      "prefill_device": get("scheduler.prefill_device"),
                      "decode_device": get("scheduler.decode_device"),
                      "max_batch": get("scheduler.max_batch"),
                      "max_queue": get("scheduler.max_queue"),
                      "tpot_budget_ms": get("scheduler.tpot_budget_ms")},
        "speculation": {"enabled": get("speculation.enabled"),
                        "max_draft": get("speculation.max_draft")},
    }


def not_applicable(keys: Mapping[str, Any], capabilities: Capabilities) -> tuple[Outcome, ...]:
    return tuple(Outcome(k, NOT_APPLICABLE, v, reason=capabilities.of(k).reason)
                 for k, v in keys.items())
