"""Turns an ``Observation`` into a ``RequestRecord``: parsing happens here, after delivery.

Token counts come, in order of trust, from the response's ``usage``, from llama.cpp's
``timings``, or are counted (one SSE chunk with content = one token, as llama.cpp and
Lemonade stream) or estimated (4 characters a token); ``token_source`` says which.
Speculation counts (``draft_n``, ``draft_n_accepted``) come only from ``timings``, as llama.cpp's
server and the embedded engine report them; a backend that does not speculate leaves them
None. Nothing in a record holds prompt or completion text: only counts, times, and a model
name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferos.proxy.bounded_json import is_text, prompt_text, read_json_object
from inferos.proxy.observation import Observation
from inferos.proxy.routes import is_generation

CHARS_PER_TOKEN_ESTIMATE = 4
MAX_MODEL_NAME = 128


@dataclass(frozen=True, slots=True)
class RequestRecord:
    route: str
    model: str
    status: int
    outcome: str
    stream: bool
    e2e_s: float
    ttft_s: float | None
    gaps_s: tuple[float, ...]
    tpot_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    prompt_source: str
    completion_source: str
    in_band_error: bool
    draft_tokens: int | None = None     # timings.draft_n: tokens drafted by speculation
    draft_accepted: int | None = None   # timings.draft_n_accepted

    @property
    def spec_accept(self) -> float | None:
        """This request's share of drafted tokens accepted; None when it drafted none
        (or its backend does not say)."""
        drafted, accepted = self.draft_tokens, self.draft_accepted
        if drafted is None or accepted is None or drafted == 0 or accepted > drafted:
            return None
        return accepted / drafted


@dataclass(slots=True)
class _Request:
    model: str = "unknown"
    stream: bool = False
    prompt_chars: int = 0


def _request_facts(obs: Observation) -> _Request:
    facts = _Request()
    if obs.request_truncated or not obs.request_body:
        return facts
    # Malformed (or too costly) JSON is the backend's business; observation just shrugs.
    body = read_json_object(bytes(obs.request_body))
    if body is None:
        return facts
    model = body.get("model")
    if isinstance(model, str) and model and len(model) <= MAX_MODEL_NAME and is_text(model):
        facts.model = model
    facts.stream = body.get("stream") is True
    facts.prompt_chars = len(prompt_text(body) or "")
    return facts


@dataclass(slots=True)
class _Response:
    token_times: list[float]
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    text_chars: int = 0
    in_band_error: bool = False


def _content_chars(payload: dict[str, Any]) -> int:
    """Generated characters in one chunk or response (content, text, reasoning, tool calls)."""
    chars = 0
    choices = payload.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            for part in (choice.get("delta"), choice.get("message")):
                if isinstance(part, dict):
                    for key in ("content", "reasoning_content"):
                        if isinstance(part.get(key), str):
                            chars += len(part[key])
                    if part.get("tool_calls"):
                        chars += 1
            if isinstance(choice.get("text"), str):
                chars += len(choice["text"])
    # Ollama /api/chat|generate and Responses API deltas.
    message = payload.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        chars += len(message["content"])
    for key in ("response", "delta"):
        if isinstance(payload.get(key), str):
            chars += len(payload[key])
    return chars


def _absorb(payload: Any, at: float | None, out: _Response) -> None:
    if not isinstance(payload, dict):
        return
    if "error" in payload and "choices" not in payload:
        out.in_band_error = True
    chars = _content_chars(payload)
    if chars:
        out.text_chars += chars
        if at is not None:
            out.token_times.append(at)
    # A Responses stream carries them in its last event's response object
    # (response.completed / response.incomplete); Ollama's "response" is a string.
    nested = payload.get("response")
    for source in (payload, nested if isinstance(nested, dict) else {}):
        if isinstance(source.get("usage"), dict):
            out.usage = source["usage"]
        if isinstance(source.get("timings"), dict):
            out.timings = source["timings"]


def _parse_sse(obs: Observation) -> _Response:
    out = _Response(token_times=[])
    pending = b""
    for chunk, at in zip(obs.chunks, obs.chunk_times, strict=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # event:, id:, comments (": ping") and blank separators
            data = line[5:].strip()
            if not data or data == b"[DONE]":
                continue
            try:
                _absorb(json.loads(data), at, out)
            except ValueError:
                continue
    return out


def _parse_json(obs: Observation) -> _Response:
    out = _Response(token_times=[])
    try:
        _absorb(json.loads(b"".join(obs.chunks)), None, out)
    except ValueError:
        pass
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def build_record(obs: Observation) -> RequestRecord:
    req = _request_facts(obs)
    ended = obs.ended if obs.ended is not None else obs.started
    is_sse = obs.content_type.startswith("text/event-stream")
    generation = is_generation(obs.route) and 200 <= obs.status < 300
    if not generation or obs.response_truncated:
        resp = _Response(token_times=[])
    elif is_sse:
        resp = _parse_sse(obs)
    elif obs.content_type.startswith("application/json") or obs.content_type.endswith("+json"):
        resp = _parse_json(obs)
    else:
        resp = _Response(token_times=[])

    prompt, prompt_source = None, "none"
    completion, completion_source = None, "none"
    if resp.usage is not None:
        prompt = _int(resp.usage.get("prompt_tokens", resp.usage.get("input_tokens")))
        completion = _int(resp.usage.get("completion_tokens", resp.usage.get("output_tokens")))
        prompt_source = "usage" if prompt is not None else "none"
        completion_source = "usage" if completion is not None else "none"
    drafted = accepted = None
    if resp.timings is not None:
        drafted = _int(resp.timings.get("draft_n"))
        accepted = _int(resp.timings.get("draft_n_accepted"))
        if prompt is None and _int(resp.timings.get("prompt_n")) is not None:
            prompt, prompt_source = _int(resp.timings.get("prompt_n")), "timings"
        if completion is None and _int(resp.timings.get("predicted_n")) is not None:
            completion, completion_source = _int(resp.timings.get("predicted_n")), "timings"
    if generation:
        if completion is None and resp.token_times:
            completion, completion_source = len(resp.token_times), "counted"
        elif completion is None and resp.text_chars:
            completion = max(1, round(resp.text_chars / CHARS_PER_TOKEN_ESTIMATE))
            completion_source = "estimate"
        if prompt is None and req.prompt_chars:
            prompt = max(1, round(req.prompt_chars / CHARS_PER_TOKEN_ESTIMATE))
            prompt_source = "estimate"

    times = resp.token_times
    ttft = times[0] - obs.started if times else None
    gaps = tuple(b - a for a, b in zip(times, times[1:], strict=False))
    tpot = None
    if len(times) >= 2:
        steps = (completion or len(times)) - 1
        if steps > 0:
            tpot = (times[-1] - times[0]) / steps
    return RequestRecord(
        route=obs.route,
        model=req.model,
        status=obs.status,
        outcome=obs.outcome,
        stream=is_sse or req.stream,
        e2e_s=ended - obs.started,
        ttft_s=ttft,
        gaps_s=gaps,
        tpot_s=tpot,
        prompt_tokens=prompt,
        completion_tokens=completion,
        prompt_source=prompt_source,
        completion_source=completion_source,
        in_band_error=resp.in_band_error,
        draft_tokens=drafted,
        draft_accepted=accepted if drafted is not None else None,
    )
