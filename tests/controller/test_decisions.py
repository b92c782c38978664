"""Decisions on evidence, weighed against their cost (pure logic, no backend)."""

from __future__ import annotations

import time

import pytest

from inferos.controller import decisions
from inferos.controller.cache_types import CacheType
from inferos.controller.decisions import Costs, DecisionSettings, Evidence, decide
from inferos.controller.evidence import gather
from inferos.controller.policy import apply_patch
from inferos.controller.profiles import profile_policy
from inferos.controller.run_context import RunContext
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.record import RequestRecord

ENGINE = BackendSettings(ctx_size=4096, cache_type="f16", threads=2)
BALANCED = profile_policy("balanced")


def _record(prompt: int, completion: int, e2e_s: float = 2.0) -> RequestRecord:
    return RequestRecord(route="chat/completions", model="m", status=200, outcome="ok",
                         stream=True, e2e_s=e2e_s, ttft_s=0.1, gaps_s=(), tpot_s=0.02,
                         prompt_tokens=prompt, completion_tokens=completion,
                         prompt_source="usage", completion_source="usage", in_band_error=False)


def _evidence(uses: list[int], *, span_s: float = 120.0, e2e_s: float = 2.0,
              contexts: list[RunContext] | None = None, ctx: int = 4096,
              pressure: bool = False, client_changed_at: float | None = None) -> Evidence:
    now = 1000.0
    step = span_s / max(1, len(uses) - 1)
    records = [(now - span_s + i * step, _record(u - 10, 10, e2e_s)) for i, u in enumerate(uses)]
    return gather(records, contexts or [], ctx, DecisionSettings(), memory_pressure=pressure,
                  client_changed_at=client_changed_at, now=now, wall_now=time.time())


def test_one_short_request_changes_nothing() -> None:
    decision = decide(ENGINE, BALANCED, _evidence([9]), Costs())
    assert decision.settings.ctx_size == 4096
    assert decision.changes(ENGINE) == ()
    assert "not enough evidence" in decision.reason


def test_many_short_requests_never_shrink_without_memory_pressure() -> None:
    decision = decide(ENGINE, BALANCED, _evidence([9] * 50), Costs())
    assert decision.settings.ctx_size == 4096
    assert "no memory pressure" in decision.reason


def test_an_absurd_max_tokens_is_not_evidence() -> None:
    huge = [RunContext(model="m", seq_len=9, seq_len_source="tokenizer", max_tokens=2**70)
            for _ in range(20)]
    seen = _evidence([30] * 20, contexts=huge)
    assert seen.used_max == 30 and seen.over_limit == 0 and seen.near_limit == 0
    assert decide(ENGINE, BALANCED, seen, Costs()).settings.ctx_size == 4096


def test_context_grows_on_requests_near_the_limit_clamped_to_the_model() -> None:
    seen = _evidence([100] * 8 + [3900, 4000, 4050], e2e_s=5.0)
    decision = decide(ENGINE, BALANCED, seen, Costs(reload_s=5.0), model_max=8192)
    assert decision.settings.ctx_size == 8192
    assert decision.gain_s is not None and decision.cost_s is not None
    assert decision.gain_s > decision.cost_s
    assert decision.as_event()["evidence"]["near_limit"] == 3


def test_growth_is_declined_when_it_costs_more_than_it_gains() -> None:
    seen = _evidence([100] * 8 + [3900, 4000], e2e_s=0.001)
    decision = decide(ENGINE, BALANCED, seen, Costs(reload_s=30.0), model_max=8192)
    assert decision.settings.ctx_size == 4096
    assert "cost more" in decision.reason


def test_prompts_that_did_not_fit_are_evidence() -> None:
    too_long = [RunContext(model="m", seq_len=5000, seq_len_source="tokenizer")
                for _ in range(3)]
    seen = _evidence([100] * 10, contexts=too_long, e2e_s=5.0)
    assert seen.over_limit == 3
    assert decide(ENGINE, BALANCED, seen, Costs(reload_s=2.0),
                  model_max=8192).settings.ctx_size == 8192


def test_memory_pressure_shrinks_but_never_below_what_requests_used() -> None:
    big = BackendSettings(ctx_size=16384)
    seen = _evidence([3000] * 10, ctx=16384, pressure=True)
    assert decide(big, BALANCED, seen, Costs()).settings.ctx_size == 4096
    seen = _evidence([14000] * 10, ctx=16384, pressure=True)
    assert decide(big, BALANCED, seen, Costs()).settings.ctx_size == 16384


def test_a_pin_is_the_users_word() -> None:
    pinned = apply_patch(BALANCED, {"backend": {"ctx_size": 2048, "threads": 1}})
    decision = decide(ENGINE, pinned, _evidence([9]), Costs())
    assert decision.settings.ctx_size == 2048 and decision.settings.threads == 1


def test_after_a_client_changed_the_backend_automatic_changes_wait() -> None:
    seen = _evidence([100] * 8 + [3900, 4000, 4050], e2e_s=5.0, client_changed_at=990.0)
    decision = decide(ENGINE, BALANCED, seen, Costs(reload_s=1.0), model_max=8192)
    assert decision.settings.ctx_size == 4096
    assert "a client changed the backend" in decision.reason


def test_an_unmeasured_cache_type_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "CACHE_TYPES", (
        CacheType("f16", 1, 2.0, 0.0, "reference"), CacheType("q8_0", 8, 34 / 32, None, "no"),
        CacheType("q4_0", 2, 18 / 32, None, "no")))
    assert decisions.cache_type_for(BALANCED, None)[0] == "f16"


def test_a_compact_cache_type_is_taken_only_under_pressure_or_when_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions, "CACHE_TYPES", (
        CacheType("f16", 1, 2.0, 0.0, "reference"), CacheType("q8_0", 8, 34 / 32, 0.01, "m"),
        CacheType("q4_0", 2, 18 / 32, 0.9, "m")))
    running = BackendSettings(ctx_size=4096, cache_type="f16")
    idle = decide(running, BALANCED, _evidence([100] * 10), Costs())
    assert idle.settings.cache_type == "f16" and "nobody is short of" in idle.reason
    asked = decide(running, BALANCED, _evidence([100] * 10), Costs(),
                   user_asked=frozenset({"kv.cache_type"}))
    assert asked.settings.cache_type == "q8_0"
    pressed = decide(running, BALANCED, _evidence([100] * 10, pressure=True), Costs())
    assert pressed.settings.cache_type == "q8_0"
    # q4_0's measured cost (0.9) is over the balanced budget (0.5) even when aggressive asks
    aggressive = apply_patch(BALANCED, {"kv": {"cache_type": "q4_0"}})
    assert decisions.cache_type_for(aggressive, None)[0] == "q8_0"
    assert decisions.cache_type_for(aggressive, 0.001)[0] == "f16"


def test_reload_in_place_costs_more_than_blue_green() -> None:
    seen = _evidence([100] * 10)
    assert decisions.change_cost(Costs(5.0, in_place=True), seen) > \
        decisions.change_cost(Costs(5.0, in_place=False), seen)


def test_every_policy_key_has_one_place_in_the_report() -> None:
    from inferos.controller import backend, policy_report
    from inferos.controller.policy import policy_keys

    places = [*backend.LIVE_KEYS, *backend.RESTART_KEYS, *policy_report.STATIC_KEYS,
              *policy_report.OWN_KEYS]
    assert len(places) == len(set(places))
    assert set(places) == set(policy_keys())
