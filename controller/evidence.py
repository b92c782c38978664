"""Gathering the evidence a decision weighs, from what the proxy measured.

A request's *need* is what it used: prompt + completion tokens from its response (usage,
timings or counted). What a client asked for (``max_tokens``) is never counted as need.
A prompt that did not fit is known from its run-context (the prompt's tokens, counted
with the model's tokenizer when known, else estimated) exceeding the context in effect.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

from inferos.controller.decisions import DecisionSettings, Evidence
from inferos.controller.request_stats import ModelStats
from inferos.controller.run_context import RunContext
from inferos.proxy.record import RequestRecord
from inferos.proxy.routes import is_generation


def gather(records: Iterable[tuple[float, RequestRecord]], contexts: Iterable[RunContext],
           ctx_in_effect: int | None, settings: DecisionSettings, *,
           memory_pressure: bool, client_changed_at: float | None,
           stats: ModelStats | None = None, now: float | None = None,
           wall_now: float | None = None) -> Evidence:
    """``records``: (monotonic time, record) pairs; ``contexts`` carry wall-clock ``at``."""
    now = time.monotonic() if now is None else now
    wall_now = time.time() if wall_now is None else wall_now
    since = now - settings.window_s
    recent = [(at, r) for at, r in records if at >= since and is_generation(r.route)]
    used = [r.prompt_tokens + (r.completion_tokens or 0) for _, r in recent
            if r.prompt_tokens is not None and 200 <= r.status < 300]
    near = 0
    over = 0
    if ctx_in_effect:
        near = sum(1 for u in used if u >= settings.near_limit * ctx_in_effect)
        over = sum(1 for c in contexts if c.at >= wall_now - settings.window_s
                   and c.seq_len_source != "caller" and c.seq_len >= ctx_in_effect)
    budgets = [c.quality_budget for c in contexts
               if c.quality_budget is not None and c.at >= wall_now - settings.window_s]
    times = [at for at, _ in recent]
    span = max(times) - min(times) if times else 0.0
    e2e = [r.e2e_s for _, r in recent]
    return Evidence(
        requests=len(recent), span_s=round(span, 3), used_max=max(used) if used else None,
        near_limit=near, over_limit=over,
        mean_e2e_s=round(statistics.fmean(e2e), 4) if e2e else None,
        rate_per_s=round(len(recent) / settings.window_s, 4),
        memory_pressure=memory_pressure,
        quality_budget=min(budgets) if budgets else None,
        client_changed_s_ago=None if client_changed_at is None
        else round(now - client_changed_at, 1),
        stats=stats)
