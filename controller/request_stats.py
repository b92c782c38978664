"""Rolling per-model request statistics, fed by the proxy's records.

``RequestStats.add`` runs on the data plane (an atomic deque append); ``summary`` runs on
the controller and reads a copy. Percentiles are nearest-rank over the window.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from inferos.proxy.record import RequestRecord
from inferos.proxy.routes import is_generation


@dataclass(frozen=True, slots=True)
class ModelStats:
    model: str
    requests: int
    errors: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    e2e_p95_ms: float | None
    tps: float | None            # decode tokens per second, median over requests
    prompt_tokens_max: int | None
    prompt_tokens_p95: int | None
    completion_tokens_max: int | None
    # Speculative tokens over the requests whose timings counted drafts (0: none did).
    drafted: int = 0
    accepted: int = 0

    @property
    def spec_accept(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


class RequestStats:
    def __init__(self, window_s: float = 60.0, maxlen: int = 4096) -> None:
        self.window_s = window_s
        self._records: collections.deque[tuple[float, RequestRecord]] = collections.deque(
            maxlen=maxlen)

    def add(self, record: RequestRecord) -> None:
        self._records.append((time.monotonic(), record))

    def timed(self) -> list[tuple[float, RequestRecord]]:
        """Every kept record with the monotonic time it finished (a copy)."""
        return list(self._records)

    def recent(self, window_s: float | None = None) -> list[RequestRecord]:
        since = time.monotonic() - (window_s or self.window_s)
        return [r for at, r in list(self._records) if at >= since]

    def summary(self, window_s: float | None = None) -> dict[str, ModelStats]:
        by_model: dict[str, list[RequestRecord]] = collections.defaultdict(list)
        for record in self.recent(window_s):
            if is_generation(record.route):
                by_model[record.model].append(record)
        return {model: _summarize(model, records) for model, records in by_model.items()}

    def overall(self, window_s: float | None = None) -> ModelStats:
        records = [r for r in self.recent(window_s) if is_generation(r.route)]
        return _summarize("*", records)


def _summarize(model: str, records: list[RequestRecord]) -> ModelStats:
    ttft = [r.ttft_s * 1000 for r in records if r.ttft_s is not None]
    e2e = [r.e2e_s * 1000 for r in records]
    tps = [1 / r.tpot_s for r in records if r.tpot_s]
    prompts = [float(r.prompt_tokens) for r in records if r.prompt_tokens is not None]
    completions = [r.completion_tokens for r in records if r.completion_tokens is not None]
    p95_prompt = percentile(prompts, 95)
    drafting = [r for r in records if r.spec_accept is not None]
    return ModelStats(
        model=model,
        requests=len(records),
        errors=sum(1 for r in records if r.status >= 500 or r.outcome != "ok"
                   or r.in_band_error),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        e2e_p95_ms=percentile(e2e, 95),
        tps=percentile(tps, 50),
        prompt_tokens_max=int(max(prompts)) if prompts else None,
        prompt_tokens_p95=int(p95_prompt) if p95_prompt is not None else None,
        completion_tokens_max=max(completions) if completions else None,
        drafted=sum(r.draft_tokens or 0 for r in drafting),
        accepted=sum(r.draft_accepted or 0 for r in drafting),
    )
