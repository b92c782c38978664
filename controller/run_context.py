"""Run-context: what the controller learns about each request, posted without waiting.

The proxy posts the raw facts of each generation request (``inferos.proxy.pending_context``)
without waiting; ``derive`` turns them into a ``RunContext`` on the controller's thread,
counting prompt tokens with the model's tokenizer when one is known and estimating them
(4 characters a token, labelled ``estimate``) otherwise. A client's own ``/load`` or
``/unload`` posts facts too: ``derive`` ignores them, ``client_touched_backend`` reads them.
External callers post complete run-contexts through ``POST /v1/run-context``.

``derive`` never raises, whatever a client sent (deep nesting, huge numbers, bytes that are
not UTF-8, fields of the wrong type, a tokenizer that fails on the text): facts it cannot
read give None, which the caller counts as dropped. It runs in the controller's fast loop,
so its cost is bounded too; measured on a two-core machine, ``json.loads`` holds the GIL
(stalling the data plane as well) for ~1 ms per MiB of text but ~45 ms per MiB of ``[],``,
and the tokenizer takes ~0.3 ms per 1000 characters. Hence a body over ``MAX_READ_BYTES``
or with more than ``MAX_JSON_VALUES`` brackets and commas is not parsed, the prompt walk
stops at ``MAX_PROMPT_PARTS``, and only the first ``MAX_TOKENIZED_CHARS`` characters are
tokenized (the count for the rest is extrapolated and labelled ``estimate``). Every limit is
far beyond a prompt that fits a local model's context.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferos.controller.setting_types import Bool, Float, Int, SettingType, Text
from inferos.errors import ConfigError
from inferos.proxy.bounded_json import (  # noqa: F401  (the limits are part of this API)
    MAX_JSON_VALUES,
    MAX_PROMPT_PARTS,
    MAX_READ_BYTES,
    is_text,
    prompt_text,
    read_json_object,
)
from inferos.proxy.pending_context import RequestFacts
from inferos.proxy.record import CHARS_PER_TOKEN_ESTIMATE, MAX_MODEL_NAME
from inferos.proxy.routes import GENERATION

# model name -> token counter for that model's prompts, when the controller knows one.
TokenCounter = Callable[[str], int]

MAX_TOKENIZED_CHARS = 32_768            # ~10 ms with SmolLM2's tokenizer
MAX_CALLER_TOKENS = 1 << 24             # bounds what POST /v1/run-context may claim
MAX_CALLER_BATCH = 1 << 16


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
        """Validate ``POST /v1/run-context`` against ``CALLER_FIELDS`` (which the OpenAPI
        document is built from). Raises ``ConfigError`` naming the field; never anything
        else."""
        if not isinstance(body, dict):
            raise ConfigError("expected a JSON object", key="(body)")
        for key in body:
            if key not in CALLER_FIELDS:
                raise ConfigError("unknown field; expected one of " + ", ".join(CALLER_FIELDS),
                                  key=_shown_key(key))
        values: dict[str, Any] = {}
        for key, spec in CALLER_FIELDS.items():
            value = body.get(key)
            if value is None:
                if spec.required or (key in body and not spec.nullable):
                    raise ConfigError(f"expected {spec.kind.describe()}", key=key)
                values[key] = spec.default
                continue
            try:
                values[key] = spec.kind.parse(value, strict=True)
            except ValueError as exc:
                raise ConfigError(str(exc), key=key) from exc
        return cls(seq_len_source="caller", **values)


@dataclass(frozen=True, slots=True)
class CallerField:
    """One field of ``POST /v1/run-context``: its type (bounds included), and whether it
    must be sent, may be null, and what it is when absent."""

    kind: SettingType
    doc: str
    required: bool = False
    nullable: bool = False
    default: Any = None

    def json_schema(self) -> dict[str, Any]:
        schema = self.kind.json_schema()
        if self.nullable:
            schema["type"] = [schema["type"], "null"]
        schema["description"] = self.doc
        if not self.required:
            schema["default"] = self.default
        return schema


# The one declaration of what a caller may post; validation and /openapi.json read it.
CALLER_FIELDS: dict[str, CallerField] = {
    "seq_len": CallerField(Int(0, MAX_CALLER_TOKENS), "prompt length in tokens",
                           required=True),
    "batch": CallerField(Int(0, MAX_CALLER_BATCH), "requests arriving together",
                         required=True),
    "target_ftl_ms": CallerField(Float(minimum=0.0, unit="ms"),
                                 "the first-token latency the caller wants", nullable=True),
    "quality_budget": CallerField(Float(minimum=0.0),
                                  "the perplexity increase the caller accepts", nullable=True),
    "model": CallerField(Text(max_length=MAX_MODEL_NAME, min_length=1), "the model's name",
                         default="unknown"),
    "max_tokens": CallerField(Int(0, MAX_CALLER_TOKENS), "tokens to generate at most",
                              nullable=True),
    "stream": CallerField(Bool(), "whether the answer streams", default=False),
}


def _shown_key(key: Any) -> str:
    text = str(key)[:MAX_MODEL_NAME]
    return text if is_text(text) else text.encode("utf-8", "backslashreplace").decode()


def derive(facts: RequestFacts, counters: dict[str, TokenCounter]) -> RunContext | None:
    """A run-context from a generation request's facts; None for any other route and for a
    body that cannot be read (not a JSON object, or too costly to read). Never raises."""
    if facts.route not in GENERATION:
        return None
    body = read_json_object(facts.body)
    if body is None:
        return None
    text = prompt_text(body)
    if text is None:
        return None
    model = _model_name(body.get("model")) or "unknown"
    seq_len, source = count_tokens(text, counters.get(model))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return RunContext(model=model, seq_len=seq_len, seq_len_source=source,
                      max_tokens=_count(max_tokens), stream=body.get("stream") is True,
                      concurrency=facts.concurrency, at=facts.at)


def client_touched_backend(facts: RequestFacts) -> str | None:
    """The model a client's own ``/load`` names (Lemonade's ``model_name``, or ``model``);
    None for ``/unload``, for any other route and for a body that cannot be read."""
    if facts.route != "load":
        return None
    body = read_json_object(facts.body)
    if body is None:
        return None
    return _model_name(body.get("model_name")) or _model_name(body.get("model"))


def count_tokens(text: str, counter: TokenCounter | None) -> tuple[int, str]:
    """Prompt tokens and how they were known: the model's tokenizer (on at most
    ``MAX_TOKENIZED_CHARS``; a longer text is extrapolated from that prefix), or 4 characters
    a token. A tokenizer that fails or answers nonsense falls back to the estimate."""
    estimate = max(1, round(len(text) / CHARS_PER_TOKEN_ESTIMATE))
    if counter is None:
        return estimate, "estimate"
    head = text[:MAX_TOKENIZED_CHARS]
    try:
        tokens = counter(head)
    except Exception:  # e.g. a lone surrogate the tokenizer cannot encode
        return estimate, "estimate"
    if _count(tokens) is None:
        return estimate, "estimate"
    if len(head) == len(text):
        return max(1, tokens), "tokenizer"
    return max(1, round(tokens * len(text) / len(head))), "estimate"


def _count(value: Any, most: int | None = None) -> int | None:
    """A non-negative integer (not a bool), at most ``most``; None otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    return value if most is None or value <= most else None


def _model_name(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_NAME \
        and is_text(value) else None
