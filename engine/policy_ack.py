"""What of a policy is in effect in this engine: every key applied, or not applicable and why.

``acknowledge(policy, facts)`` answers ``POST``/``GET /inferos/v1/policy``: each dotted key
of ``engine_policy.DOTTED_KEYS`` lands in exactly one of ``applied`` (key -> the value now
in effect) and ``not_applicable`` (key -> the reason). ``EngineFacts`` are what decides it,
read from the engine as it runs: its one execution provider, whether the prefix cache is
on, whether this graph can evict inside a context, whether the model has a KV calibration.

The batch, queue, budget and speculation keys are applied by the batch scheduler
(engine/batch_scheduler.py) at its next step. The placement keys are honest about where
prefill and decode run (engine/placement.py): a device or mode that matches what runs is
applied; one that fell back is reported with what runs instead, never pretended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferos.engine.engine_policy import (
    THRESHOLD_KEYS,
    EnginePolicy,
    device_of,
    dotted,
)
from inferos.engine.placement import place

__all__ = ["EngineFacts", "PolicyAck", "acknowledge"]


@dataclass(frozen=True)
class EngineFacts:
    """``provider``: the one onnxruntime provider that runs (or would run) the model;
    ``no_eviction``/``no_calibration``: why eviction inside a context or the quality guard
    is unavailable, None when it is available."""

    provider: str
    available_providers: tuple[str, ...]
    prefix_cache: bool = True
    no_eviction: str | None = None
    no_calibration: str | None = None


@dataclass(frozen=True)
class PolicyAck:
    version: int
    applied: dict[str, Any]
    not_applicable: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "applied": self.applied,
                "not_applicable": self.not_applicable}


def _placement_reasons(policy: EnginePolicy, facts: EngineFacts) -> dict[str, str | None]:
    """The three placement keys: applied when what runs is what they ask, else why not."""
    placement = place(policy, facts.available_providers, facts.provider)
    hybrid = policy.scheduler_mode == "hybrid"

    def device(key: str, wanted: str, reason: str | None, runs: str) -> str | None:
        if hybrid:
            return reason
        return None if wanted == device_of(runs) else \
            f"{policy.scheduler_mode} places it on {device_of(runs)}; {key} counts in hybrid"

    return {
        "scheduler.mode": None if not placement.fell_back else
        f"placement fell back ({placement.reason}): the scheduler runs {placement.mode}",
        "scheduler.prefill_device": device("prefill_device", policy.prefill_device,
                                           placement.prefill_reason,
                                           placement.prefill_provider),
        "scheduler.decode_device": device("decode_device", policy.decode_device,
                                          placement.decode_reason, placement.decode_provider),
    }


def acknowledge(policy: EnginePolicy, facts: EngineFacts) -> PolicyAck:
    values = dotted(policy)
    reasons: dict[str, str | None] = dict.fromkeys(values)
    if not facts.prefix_cache:
        parked = "the prefix cache is off (--no-prefix-cache): no KV is parked"
        for key in (*THRESHOLD_KEYS, "io.host_pool_bytes", "quality.max_delta_ppl"):
            reasons[key] = parked
        if not (policy.allow_evict and facts.no_eviction is None):
            for key in ("kv.recent_window", "kv.sink_tokens"):
                reasons[key] = f"{parked}, and no context evicts"
    if policy.allow_evict and facts.no_eviction is not None:
        reasons["kv.allow_evict"] = facts.no_eviction
    if facts.no_calibration is not None and reasons["quality.max_delta_ppl"] is None:
        reasons["quality.max_delta_ppl"] = facts.no_calibration
    reasons.update(_placement_reasons(policy, facts))
    return PolicyAck(
        version=policy.version,
        applied={k: v for k, v in values.items() if reasons[k] is None},
        not_applicable={k: r for k, r in reasons.items() if r is not None})
