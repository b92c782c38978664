"""Run-context: what the controller learns about each request, posted without waiting.

The proxy posts the raw facts of each generation request (``inferos.proxy.pending_context``)
without waiting; ``derive`` turns them into a ``RunContext`` on the controller's thread,
counting prompt tokens with the model's tokenizer when one is known and estimating them
(4 characters a token, labelled ``estimate``) otherwise. External callers post complete
run-contexts through ``POST /v1/run-context``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferos.errors import ConfigError
from inferos.proxy.pending_context import RequestFacts
from inferos.proxy.record import CHARS_PER_TOKEN_ESTIMATE, prompt_text

# model name -> token counter for that model's prompts, when the controller knows one.
TokenCounter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class RunContext:
    model: str
    seq_len: int                 # prompt length in tokens
    seq_len_source: str          # "tokenizer" | "estimate" | "caller"
    max_tokens: int | None = None
    stream: bool = False
    concurrency: int = 1         # requests in flight at the proxy when this one arrived
    batch: int = 1
    target_ftl_ms: float | None = None
    quality_budget: float | None = None
    at: float = field(default_factory=time.time)

    @classmethod
    def from_api(cls, body: Any) -> RunContext:
        """Validate ``POST /v1/run-context``: seq_len, batch, target_ftl_ms, quality_budget,
        model (optional)."""
        if not isinstance(body, dict):
            raise ConfigError("expected a JSON object", key="(body)")
        allowed = {"seq_len", "batch", "target_ftl_ms", "quality_budget", "model",
                   "max_tokens", "stream"}
        for key in body:
            if key not in allowed:
                raise ConfigError("unknown field", key=key)
        for key in ("seq_len", "batch"):
            value = body.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError("expected a non-negative integer", key=key)
        for key in ("target_ftl_ms", "quality_budget"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int | float)
                                      or isinstance(value, bool) or value < 0):
                raise ConfigError("expected a non-negative number", key=key)
        model = body.get("model", "unknown")
        if not isinstance(model, str) or len(model) > 128:
            raise ConfigError("expected a model name", key="model")
        return cls(model=model, seq_len=body["seq_len"], seq_len_source="caller",
                   batch=body["batch"], target_ftl_ms=body.get("target_ftl_ms"),
                   quality_budget=body.get("quality_budget"))


def derive(facts: RequestFacts, counters: dict[str, TokenCounter]) -> RunContext | None:
    """A run-context from a request body; None when the body is not a JSON object."""
    try:
        body = json.loads(facts.body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    model = model if isinstance(model, str) and 0 < len(model) <= 128 else "unknown"
    text = prompt_text(body)
    counter = counters.get(model)
    if counter is not None:
        seq_len, source = counter(text), "tokenizer"
    else:
        seq_len, source = max(1, round(len(text) / CHARS_PER_TOKEN_ESTIMATE)), "estimate"
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = None
    return RunContext(model=model, seq_len=seq_len, seq_len_source=source,
                      max_tokens=max_tokens, stream=body.get("stream") is True,
                      concurrency=facts.concurrency, at=facts.at)
