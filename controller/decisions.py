"""Decisions: which backend settings to run, from measured stats and the run-contexts seen.

Per model, the decision engine picks context size (sized to the prompts actually seen, to
save memory), KV-cache types (the most compact the quality budget admits), threads and
execution provider, honouring the user's pins. Every candidate is scored by the seed's
objective, lower is better::

    J = p95_ms / tps  -  lambda * quality_reserve  +  mu * energy_per_token

``quality_reserve`` is the quality budget left (max_delta_ppl minus the estimated ΔPPL of
the KV type); energy is null on machines that cannot measure it and the term is left out,
never invented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from inferos.controller.policy import CACHE_TYPES, Policy
from inferos.controller.request_stats import ModelStats
from inferos.controller.snapshot import BackendSettings

# Estimated perplexity increase per KV type, from published llama.cpp measurements
# (q8_0: +0.005 on 8B; q4_0: +0.2..0.36 on small models without rotation).
KV_DELTA_PPL = {"f16": 0.0, "q8_0": 0.005, "q4_0": 0.3}
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MIN_CTX = 2048
# Headroom over the longest prompt+completion seen, so the next turn of a chat still fits.
CTX_HEADROOM = 1.25
DEFAULT_COMPLETION = 512


@dataclass(frozen=True, slots=True)
class Observed:
    """What the controller knows when deciding."""

    stats: ModelStats | None
    longest_request_tokens: int | None   # max over run-contexts of seq_len + max_tokens
    memory_pressure: bool
    quality_budget: float | None         # the tightest budget a caller asked for, if any
    model_max_ctx: int = 8192
    energy_per_token_j: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    settings: BackendSettings
    reason: str
    objective: float | None


def objective(stats: ModelStats | None, cache_type: str, max_delta_ppl: float,
              energy_per_token_j: float | None, lam: float = 1.0, mu: float = 1.0
              ) -> float | None:
    if stats is None or stats.ttft_p95_ms is None or not stats.tps:
        return None
    reserve = max_delta_ppl - KV_DELTA_PPL[cache_type]
    value = stats.ttft_p95_ms / stats.tps - lam * reserve
    if energy_per_token_j is not None:
        value += mu * energy_per_token_j
    return value


def _ctx_size(current: BackendSettings, policy: Policy, seen: Observed) -> tuple[int | None, str]:
    if policy.backend.ctx_size is not None:
        return min(policy.backend.ctx_size, seen.model_max_ctx), "pinned by policy"
    if seen.longest_request_tokens is None:
        return current.ctx_size, "no requests seen yet"
    need = seen.longest_request_tokens * CTX_HEADROOM
    size = MIN_CTX
    while size < need and size < seen.model_max_ctx:
        size *= 2
    size = min(size, seen.model_max_ctx)
    if current.ctx_size is not None and size < current.ctx_size and not seen.memory_pressure:
        # Shrinking costs a reload and saves memory nobody is short of: keep what runs.
        return current.ctx_size, "prompts fit; no memory pressure to shrink for"
    return size, f"longest request seen {seen.longest_request_tokens} tokens"


def _cache_type(policy: Policy, seen: Observed) -> tuple[str, str]:
    budget = policy.quality.max_delta_ppl
    if seen.quality_budget is not None:
        budget = min(budget, seen.quality_budget)
    ceiling = CACHE_TYPES.index(policy.kv.cache_type)
    for cache_type in reversed(CACHE_TYPES[: ceiling + 1]):
        if KV_DELTA_PPL[cache_type] <= budget:
            return cache_type, f"most compact KV within quality budget {budget}"
    return "f16", "quality budget admits no quantization"


def decide(current: BackendSettings, policy: Policy, seen: Observed,
           available_providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Decision:
    ctx, ctx_reason = _ctx_size(current, policy, seen)
    cache_type, kv_reason = _cache_type(policy, seen)
    threads = policy.backend.threads or current.threads or os.cpu_count()
    provider = policy.backend.provider or current.provider or available_providers[0]
    settings = BackendSettings(
        ctx_size=ctx, cache_type_k=cache_type, cache_type_v=cache_type,
        flash_attn=cache_type != "f16",  # a quantized V cache needs flash attention
        threads=threads, provider=provider, host_pool_bytes=policy.io.host_pool_bytes,
        kv_allow_evict=policy.kv.allow_evict)
    score = objective(seen.stats, cache_type, policy.quality.max_delta_ppl,
                      seen.energy_per_token_j)
    reason = f"ctx {ctx}: {ctx_reason}; kv {cache_type}: {kv_reason}"
    return Decision(settings, reason, score)


def starting_settings(policy: Policy, ctx_size: int | None = None) -> BackendSettings:
    """What a backend Infer-OS starts itself runs with before any request is seen."""
    nothing_seen = Observed(stats=None, longest_request_tokens=None, memory_pressure=False,
                            quality_budget=None)
    return decide(BackendSettings(ctx_size=ctx_size), policy, nothing_seen).settings


def kv_bytes(settings: BackendSettings, layers: int = 30, kv_heads: int = 3,
             head_dim: int = 64) -> int | None:
    """KV-cache bytes at the decided context, for memory accounting and events."""
    if settings.ctx_size is None:
        return None
    per_token = layers * kv_heads * head_dim * (
        KV_BYTES_PER_ELEMENT[settings.cache_type_k] + KV_BYTES_PER_ELEMENT[settings.cache_type_v])
    return int(per_token * settings.ctx_size)
