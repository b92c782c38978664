"""What of a policy is in effect in this engine: every key applied, or not applicable and why.

``acknowledge(policy, facts)`` answers ``POST``/``GET /inferos/v1/policy``: each dotted key
of ``engine_policy.DOTTED_KEYS`` lands in exactly one of ``applied`` (key -> the value now
in effect) and ``not_applicable`` (key -> the reason). ``EngineFacts`` are what decides it,
read from the engine as it runs: its one execution provider, whether the prefix cache is
on, whether this graph can evict inside a context, whether the model has a KV calibration.

The scheduler keys are honest about an engine that runs every step of every request on one
provider, with no batching scheduler and no speculation: a device or mode that matches
what runs is applied; anything else is reported with what runs instead, never pretended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferos.engine.engine_policy import (
    DEVICE_PROVIDERS,
    THRESHOLD_KEYS,
    EnginePolicy,
    device_of,
    dotted,
)

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


def _device_reason(role: str, wanted: str, facts: EngineFacts) -> str | None:
    running = device_of(facts.provider)
    if wanted == running:
        return None
    providers = DEVICE_PROVIDERS.get(wanted, ())
    if not any(p in facts.available_providers for p in providers):
        return f"{wanted} is not available on this machine; {role} runs on {running}"
    return (f"{wanted} is available, but the engine runs prefill and decode on one provider "
            f"({facts.provider}); changing it needs a reload with another provider; "
            f"{role} runs on {running}")


def _mode_reason(wanted: str, facts: EngineFacts) -> str | None:
    running = device_of(facts.provider)
    in_effect = {"cpu": "cpu_only", "npu": "npu_only"}.get(running, "gpu_only")
    if wanted == in_effect:
        return None
    return (f"the engine has no scheduler that splits work between devices: every step runs "
            f"on {facts.provider}, which is {in_effect}")


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
    reasons["quality.min_accept_rate"] = "the engine does no speculative decoding"
    reasons["scheduler.mode"] = _mode_reason(policy.scheduler_mode, facts)
    reasons["scheduler.prefill_device"] = _device_reason("prefill", policy.prefill_device,
                                                         facts)
    reasons["scheduler.decode_device"] = _device_reason("decode", policy.decode_device, facts)
    return PolicyAck(
        version=policy.version,
        applied={k: v for k, v in values.items() if reasons[k] is None},
        not_applicable={k: r for k, r in reasons.items() if r is not None})
