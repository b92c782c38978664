"""Decisions: which backend settings to run, taken only on evidence that the change gains
more than it costs. Pure functions of what was observed; the controller applies them.

The rules, each a promise to the user:

- **Never from one request.** An automatic change needs ``min_requests`` generations over at
  least ``min_span_s`` seconds. What a client *asks* for is not evidence of need: a
  request's need is the tokens it actually used (prompt + completion, from the response),
  so ``max_tokens: 2**70`` changes nothing.
- **Context grows on evidence**: requests that came within ``near_limit`` of the context
  in effect, or whose prompt did not fit, to the next power of two over the longest use
  (x ``headroom``), clamped to the model's maximum. **It never shrinks below what recent
  requests used, and never without memory pressure.**
- **Gain against cost.** A reload in place (Lemonade) is downtime for every generation that
  arrives meanwhile; a blue/green restart costs the serving process CPU while the new one
  starts (bench/reconfigure.py measured e2e +36% during a switch on two cores). Growth is
  taken only when the requests expected to hit the limit over ``horizon_s`` cost more
  user time than the change. A more compact KV type is taken on a running backend only
  under memory pressure (it saves memory nobody is short of otherwise), and only a type
  whose quality cost was *measured* and fits the budget.
- **The user's word wins.** Pins (``backend.ctx_size``, ``threads``, ``provider``) and a
  policy change the user just made (``user_asked``) are applied without the evidence
  rule; after a client changed the backend itself (its own /load or /unload), automatic
  changes wait ``client_backoff_s``.
- **Hysteresis**: growth starts at ``near_limit`` (90 %) of the context; nothing shrinks
  until memory is short; after any change the controller's cooldown applies.

Every decision carries its evidence, which the controller writes into its event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from inferos.controller.cache_types import CACHE_TYPES, by_name
from inferos.controller.policy import Policy
from inferos.controller.request_stats import ModelStats
from inferos.controller.snapshot import BackendSettings

# A blue/green switch slows the serving process while the new one starts: e2e p50 went
# from 35.8 to 48.8 ms during switches in bench/reconfigure.py (ratio 1.36, 2 cores).
RESTART_SLOWDOWN = 0.36
# Until a reload has been timed on this backend, what one is assumed to cost.
DEFAULT_RELOAD_S = 10.0
MAX_CTX_WITHOUT_MODEL_LIMIT = 131072


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    min_requests: int = 8
    min_span_s: float = 30.0
    window_s: float = 300.0
    near_limit: float = 0.9
    headroom: float = 1.25
    min_ctx: int = 2048
    horizon_s: float = 600.0
    client_backoff_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """What was observed over the decision window, for one backend."""

    requests: int = 0                    # generation requests in the window
    span_s: float = 0.0                  # first to last of them
    used_max: int | None = None          # most tokens one request used (prompt+completion)
    near_limit: int = 0                  # requests that used >= near_limit of the context
    over_limit: int = 0                  # prompts that did not fit the context
    mean_e2e_s: float | None = None
    rate_per_s: float = 0.0
    memory_pressure: bool = False
    quality_budget: float | None = None  # the tightest a caller asked for, if any
    client_changed_s_ago: float | None = None
    stats: ModelStats | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("stats")
        return out


@dataclass(frozen=True, slots=True)
class Costs:
    reload_s: float = DEFAULT_RELOAD_S   # measured on this backend once one happened
    in_place: bool = True                # a reload in place blocks generations meanwhile


@dataclass(frozen=True, slots=True)
class Decision:
    settings: BackendSettings            # what to run (== in effect: nothing to do)
    reason: str
    evidence: Evidence
    gain_s: float | None = None
    cost_s: float | None = None
    objective: float | None = None

    def changes(self, in_effect: BackendSettings) -> tuple[str, ...]:
        return tuple(name for name in ("ctx_size", "cache_type", "threads", "provider")
                     if getattr(self.settings, name) is not None
                     and getattr(self.settings, name) != getattr(in_effect, name))

    def as_event(self) -> dict[str, Any]:
        return {"reason": self.reason, "settings": self.settings.as_dict(),
                "evidence": self.evidence.as_dict(),
                "gain_s": None if self.gain_s is None else round(self.gain_s, 3),
                "cost_s": None if self.cost_s is None else round(self.cost_s, 3),
                "objective": self.objective}


def objective(stats: ModelStats | None, cache_type: str, max_delta_ppl: float,
              energy_per_token_j: float | None = None, lam: float = 1.0, mu: float = 1.0
              ) -> float | None:
    """The seed's J = p95_ms / tps - lambda * quality_reserve (+ mu * energy, left out where
    it is not measured). None when the figures or the type's measured cost are missing."""
    cost = by_name(cache_type).delta_ppl
    if stats is None or stats.ttft_p95_ms is None or not stats.tps or cost is None:
        return None
    value = stats.ttft_p95_ms / stats.tps - lam * (max_delta_ppl - cost)
    if energy_per_token_j is not None:
        value += mu * energy_per_token_j
    return value


def change_cost(costs: Costs, evidence: Evidence) -> float:
    """User seconds a reconfiguration costs: every generation arriving during an in-place
    reload waits for it; a blue/green restart slows the ones running meanwhile."""
    if costs.in_place:
        return costs.reload_s * (1.0 + evidence.rate_per_s * costs.reload_s)
    return costs.reload_s * RESTART_SLOWDOWN * max(1.0, evidence.rate_per_s * costs.reload_s)


def _power_of_two_over(tokens: float, floor: int) -> int:
    size = floor
    while size < tokens:
        size *= 2
    return size


def _ctx(in_effect: int | None, policy: Policy, seen: Evidence, costs: Costs,
         model_max: int | None, ds: DecisionSettings, automatic: bool
         ) -> tuple[int | None, str, float | None, float | None]:
    limit = model_max or MAX_CTX_WITHOUT_MODEL_LIMIT
    if policy.backend.ctx_size is not None:
        return min(policy.backend.ctx_size, limit), "pinned by the policy", None, None
    if in_effect is None:
        return None, "the backend's own context (not reported)", None, None
    if not automatic:
        return in_effect, "automatic changes paused", None, None
    if seen.requests < ds.min_requests or seen.span_s < ds.min_span_s:
        return in_effect, (f"not enough evidence ({seen.requests} requests over "
                           f"{seen.span_s:.0f} s; needs {ds.min_requests} over "
                           f"{ds.min_span_s:.0f} s)"), None, None
    used = seen.used_max or 0
    pressing = seen.near_limit + seen.over_limit
    if pressing >= 2 and in_effect < limit:
        target = min(_power_of_two_over(used * ds.headroom, ds.min_ctx), limit)
        if seen.over_limit:
            target = max(target, min(in_effect * 2, limit))
        if target > in_effect:
            rate = pressing / max(seen.span_s, 1.0)
            gain = rate * ds.horizon_s * (seen.mean_e2e_s or 1.0)
            cost = change_cost(costs, seen)
            if gain > cost:
                return target, (f"{pressing} of {seen.requests} requests reached the "
                                f"context ({seen.over_limit} did not fit)"), gain, cost
            return in_effect, (f"{pressing} requests reached the context, but growing "
                               f"would cost more ({cost:.1f} s) than it gains "
                               f"({gain:.1f} s)"), gain, cost
    if seen.memory_pressure:
        target = max(_power_of_two_over(used * ds.headroom, ds.min_ctx), ds.min_ctx)
        if target < in_effect:
            return target, (f"memory pressure; the longest recent request used {used} "
                            "tokens"), None, change_cost(costs, seen)
        return in_effect, "memory pressure, but recent requests use the context", None, None
    return in_effect, "requests fit; no memory pressure to shrink for", None, None


def cache_type_for(policy: Policy, quality_budget: float | None) -> tuple[str, str]:
    """The most compact llama.cpp KV type up to the policy's whose *measured* quality cost
    fits the budget; an unmeasured type is never chosen."""
    budget = policy.quality.max_delta_ppl
    if quality_budget is not None:
        budget = min(budget, quality_budget)
    names = [c.name for c in CACHE_TYPES]
    ceiling = names.index(policy.kv.cache_type)
    for cache in reversed(CACHE_TYPES[: ceiling + 1]):
        if cache.name == "f16":
            break
        if cache.delta_ppl is not None and cache.delta_ppl <= budget:
            return cache.name, f"measured dPPL {cache.delta_ppl} within budget {budget}"
    return "f16", f"no measured quantized type within budget {budget}"


def decide(in_effect: BackendSettings, policy: Policy, seen: Evidence, costs: Costs,
           *, model_max: int | None = None, user_asked: frozenset[str] = frozenset(),
           settings: DecisionSettings = DecisionSettings()) -> Decision:
    """``in_effect``: what the backend reported back. ``user_asked``: policy keys the user
    changed since the last decision (applied without the evidence rule)."""
    automatic = (seen.client_changed_s_ago is None
                 or seen.client_changed_s_ago >= settings.client_backoff_s)
    if not automatic and not user_asked:
        # A client changed the backend itself (its own /load): even pins wait, so the
        # model a client just loaded is not reloaded under it.
        return Decision(in_effect, f"a client changed the backend "
                        f"{seen.client_changed_s_ago:.0f} s ago; nothing changes for "
                        f"{settings.client_backoff_s:.0f} s after that", seen)
    ctx, ctx_reason, gain, cost = _ctx(in_effect.ctx_size, policy, seen, costs, model_max,
                                       settings, automatic)
    wanted_type, type_reason = cache_type_for(policy, seen.quality_budget)
    cache_type = in_effect.cache_type
    if wanted_type != in_effect.cache_type:
        if "kv.cache_type" in user_asked or "profile" in user_asked:
            cache_type, type_reason = wanted_type, f"asked by the user; {type_reason}"
        elif automatic and seen.memory_pressure and wanted_type != "f16":
            cache_type, type_reason = wanted_type, f"memory pressure; {type_reason}"
        else:
            type_reason = (f"keeping {in_effect.cache_type}: {wanted_type} would save memory "
                           "nobody is short of, and a reload costs downtime")
    wanted = replace(in_effect, ctx_size=ctx, cache_type=cache_type,
                     threads=policy.backend.threads or in_effect.threads,
                     provider=policy.backend.provider or in_effect.provider)
    reason = f"ctx {ctx}: {ctx_reason}; kv {cache_type}: {type_reason}"
    if not automatic:
        reason += (f"; a client changed the backend {seen.client_changed_s_ago:.0f} s ago, "
                   "automatic changes wait")
    return Decision(wanted, reason, seen, gain, cost,
                    objective(seen.stats, cache_type, policy.quality.max_delta_ppl))


def starting_settings(policy: Policy, ctx_size: int | None = None) -> BackendSettings:
    """What a backend Infer-OS starts itself runs with: no reload to pay for yet, so the
    profile's KV type (within the budget) and the user's pins; the context the backend
    picks itself unless pinned."""
    cache_type, _ = cache_type_for(policy, None)
    return BackendSettings(ctx_size=policy.backend.ctx_size or ctx_size,
                           cache_type=cache_type, threads=policy.backend.threads,
                           provider=policy.backend.provider)
