"""What ``GET stats`` reports: Lemonade's last-request fields, plus running totals.

Lemonade's ``stats`` is global last-request state (wrong under concurrency, which is why the
proxy measures per request itself); "last" here is the last generation that finished, in
the order they finished (generations are batched). Its time to first token includes the
wait for a batch row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferos.engine.completion_run import Outcome


@dataclass(frozen=True)
class LastRequest:
    time_to_first_token: float  # seconds, as Lemonade reports it
    tokens_per_second: float
    input_tokens: int
    output_tokens: int
    cache_tokens: int

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> LastRequest:
        timings = outcome.timings.as_dict()
        ttft_ms = outcome.timings.queue_ms + outcome.timings.prompt_ms
        return cls(time_to_first_token=round(ttft_ms / 1000.0, 6),
                   tokens_per_second=timings["predicted_per_second"],
                   input_tokens=outcome.prompt_tokens, output_tokens=outcome.completion_tokens,
                   cache_tokens=outcome.timings.cache_n)


class RequestStats:
    """Counters updated on the event loop only (no lock needed)."""

    def __init__(self) -> None:
        self.last: LastRequest | None = None
        self.requests = 0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.rejected = 0  # 503 queue_full: every row busy and the queue full
        self.input_tokens = 0
        self.output_tokens = 0

    def started(self) -> None:
        self.requests += 1

    def finished(self, outcome: Outcome) -> None:
        self.completed += 1
        self.input_tokens += outcome.prompt_tokens
        self.output_tokens += outcome.completion_tokens
        self.last = LastRequest.from_outcome(outcome)

    def as_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "time_to_first_token": last.time_to_first_token if last else None,
            "tokens_per_second": last.tokens_per_second if last else None,
            "input_tokens": last.input_tokens if last else None,
            "output_tokens": last.output_tokens if last else None,
            # Lemonade: prompt_tokens are the ones evaluated, cache_tokens the ones reused.
            "prompt_tokens": (last.input_tokens - last.cache_tokens) if last else None,
            "cache_tokens": last.cache_tokens if last else None,
            "total_requests": self.requests,
            "completed_requests": self.completed,
            "cancelled_requests": self.cancelled,
            "failed_requests": self.failed,
            "rejected_requests": self.rejected,
            "total_input_tokens": self.input_tokens,
            "total_output_tokens": self.output_tokens,
        }
