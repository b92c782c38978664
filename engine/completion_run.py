"""One generation as the API sees it: text pieces cut at stop strings, then the outcome.

``run_completion`` drives ``ModelSlot.stream`` for one request and yields the text to send
(already cut at the first stop string, which is never sent) and, last, a ``Outcome`` with
the finish reason, token counts and llama.cpp-style timings. Timings come from the worker
thread's clock: ``queue_ms`` is the time the request waited for a batch row,
``prompt_ms`` the time from then until the first token (prefill and its sampling; the
two make the time to first token), ``predicted_ms`` the time from the first to the last
token. ``draft_n`` and ``draft_n_accepted`` count prompt-lookup speculation, as
llama.cpp's server does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from inferos.engine.api_errors import ApiError, context_exceeded
from inferos.engine.api_requests import Sampling
from inferos.engine.model_slot import LoadedState, ModelSlot
from inferos.engine.runtime import SamplingParams
from inferos.engine.sampling_defaults import DEFAULTS
from inferos.engine.stop_sequences import StopMatcher
from inferos.engine.token_logprobs import LogprobTrail
from inferos.engine.tool_calls import JsonObjectEnd
from inferos.errors import ModelError


@dataclass(frozen=True)
class Timings:
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int = 0
    queue_ms: float = 0.0       # waiting for a batch row: part of the time to first token
    draft_n: int = 0            # speculative tokens drafted (llama.cpp's names)
    draft_n_accepted: int = 0

    def as_dict(self) -> dict[str, Any]:
        prompt_rate = self.prompt_n * 1000.0 / self.prompt_ms if self.prompt_ms > 0 else 0.0
        # The first token comes out of the prefill; decoding made the other predicted_n - 1.
        steps = self.predicted_n - 1
        decode_rate = steps * 1000.0 / self.predicted_ms if steps > 0 and self.predicted_ms > 0 \
            else 0.0
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": round(self.prompt_ms, 3),
            "prompt_per_token_ms": round(self.prompt_ms / self.prompt_n, 3) if self.prompt_n
            else 0.0,
            "prompt_per_second": round(prompt_rate, 3),
            "predicted_n": self.predicted_n,
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_per_token_ms": round(self.predicted_ms / steps, 3) if steps > 0 else 0.0,
            "predicted_per_second": round(decode_rate, 3),
            "queue_ms": round(self.queue_ms, 3),
            "draft_n": self.draft_n,
            "draft_n_accepted": self.draft_n_accepted,
        }


@dataclass(frozen=True)
class Outcome:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def sampling_params(sampling: Sampling, prompt_tokens: int, ctx_size: int,
                    allow_evict: bool = False) -> SamplingParams:
    """The core's parameters; ``max_tokens`` never runs past the end of the context, unless
    the model evicts tokens to make room (the live ``kv.allow_evict``): then a prompt may be longer
    than the context. A request that names no ``max_tokens`` gets the default cap."""
    room = ctx_size - prompt_tokens
    wanted = sampling.max_tokens if sampling.max_tokens is not None else DEFAULTS.max_tokens
    if allow_evict:
        room = wanted
    elif room <= 0:
        raise context_exceeded(prompt_tokens, ctx_size)
    return SamplingParams(max_tokens=min(wanted, room), temperature=sampling.temperature,
                          top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed,
                          repeat_penalty=sampling.repeat_penalty, min_p=sampling.min_p,
                          logprobs=sampling.logprobs, cache_prompt=sampling.cache_prompt)


async def run_completion(slot: ModelSlot, state: LoadedState, prompt_ids: list[int],
                         sampling: Sampling, trail: LogprobTrail | None = None
                         ) -> AsyncGenerator[str | Outcome, None]:
    """Yields text pieces, then one ``Outcome``. The caller has been admitted
    (``slot.admit``). With ``sampling.logprobs`` and a ``trail``, each generated token's
    log-probabilities are added to it before the text they belong to is yielded (an
    end-of-turn token, which has no text, is not)."""
    params = sampling_params(sampling, len(prompt_ids), state.ctx_size,
                             state.model.allow_evict)
    matcher = StopMatcher(sampling.stop)
    json_end = None if sampling.json_start is None else JsonObjectEnd(sampling.json_start)
    started = time.perf_counter()
    first_at = last_at = started
    count = 0
    cached = 0
    queued_s = 0.0
    drafted = accepted = 0
    finish = "length"
    try:
        async with contextlib.aclosing(slot.stream(state.model, prompt_ids, params)) as events:
            async for timed in events:
                count += 1
                last_at = timed.at
                if count == 1:
                    first_at = timed.at
                    cached = timed.event.cached_tokens
                    queued_s = timed.event.queued_s
                drafted, accepted = timed.event.drafted, timed.event.accepted
                if trail is not None and timed.event.logprob is not None \
                        and timed.event.finish_reason != "stop":
                    trail.add(timed.event.token_id, timed.event.logprob)
                text = matcher.push(timed.event.text)
                end = None if json_end is None else json_end.push(text)
                if end is not None:
                    text = text[:end]
                if text:
                    yield text
                if matcher.stopped or end is not None:
                    finish = "stop"
                    break
                if timed.event.finish_reason is not None:
                    finish = timed.event.finish_reason
    except ValueError as exc:
        # The core refuses a prompt that does not fit; the check above makes this rare.
        raise ApiError(400, str(exc), code="context_length_exceeded") from exc
    except ModelError as exc:
        raise ApiError(500, f"generation failed: {exc}", kind="server_error",
                       code="generation_failed") from exc
    tail = matcher.flush()
    if tail:
        yield tail
    yield Outcome(
        finish_reason=finish, prompt_tokens=len(prompt_ids), completion_tokens=count,
        # As llama.cpp: prompt_n are the prompt tokens evaluated, cache_n the ones reused.
        # prompt_ms is the prefill's own time: the wait for a row is queue_ms.
        timings=Timings(prompt_n=len(prompt_ids) - cached,
                        prompt_ms=max(first_at - started - queued_s, 0.0) * 1000.0,
                        predicted_n=count, predicted_ms=(last_at - first_at) * 1000.0,
                        cache_n=cached, queue_ms=queued_s * 1000.0, draft_n=drafted,
                        draft_n_accepted=accepted))


async def collect(slot: ModelSlot, state: LoadedState, prompt_ids: list[int],
                  sampling: Sampling, trail: LogprobTrail | None = None) -> tuple[Outcome, str]:
    """The whole generation at once: its outcome and its text (a non-streamed answer)."""
    pieces: list[str] = []
    outcome: Outcome | None = None
    async with contextlib.aclosing(run_completion(slot, state, prompt_ids, sampling,
                                                  trail)) as items:
        async for item in items:
            if isinstance(item, str):
                pieces.append(item)
            else:
                outcome = item
    assert outcome is not None
    return outcome, "".join(pieces)
