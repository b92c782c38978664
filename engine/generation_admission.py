"""Getting one generation request in: its model (loaded on demand), its prompt's token ids,
the context check and a place in the scheduler, all before the response starts.

``admitted`` holds ``ModelSlot.lock`` only for the load-tokenize-check-admit sequence, so a
load waits for the generations already admitted and generations run together. Every
refusal is an ``ApiError`` with its status (nothing has been sent yet). ``accounted`` wraps
the answer itself with the engine's request counters and the one log line a generation
gets (counts and timings, never text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web

from inferos.engine.api_errors import ApiError, invalid_param, model_not_found
from inferos.engine.api_requests import GenerationRequest, known_token_ids
from inferos.engine.completion_run import Outcome, sampling_params
from inferos.engine.engine_state import EngineState
from inferos.engine.model_slot import LoadedState, QueueFull
from inferos.engine.tool_calls import ToolPlan, plan_tools
from inferos.errors import ModelError

log = logging.getLogger(__name__)


async def model_for(engine: EngineState, name: str | None) -> LoadedState:
    """The loaded model a request means, loading it on demand. Caller holds the lock."""
    state = engine.slot.state
    if state is not None and (name is None or engine.names_loaded(name)):
        return state
    if name is None:
        name = engine.default_model
    entry = engine.catalog.find(name)
    if entry is None or not entry.prepared:
        raise model_not_found(name)
    try:
        state, _ = await engine.slot.load(entry.id, entry.source, engine.defaults)
    except ModelError as exc:
        raise ApiError(500, f"loading '{entry.id}' failed: {exc}", kind="server_error",
                       code="load_failed") from exc
    return state


@dataclass(frozen=True)
class Admission:
    """A request let in: its model, its prompt's ids, the request as this model runs it (a
    tool answer's JSON end in its sampling) and, for a chat, how its tools are handled."""

    state: LoadedState
    prompt_ids: list[int]
    generation: GenerationRequest
    tools: ToolPlan | None

    @property
    def active_tools(self) -> ToolPlan | None:
        """The tool plan when the output is parsed for calls, else None."""
        return self.tools if self.tools is not None and self.tools.active else None


def _prompt_ids(state: LoadedState, request: GenerationRequest,
                plan: ToolPlan | None) -> list[int]:
    """The prompt's token ids: a chat rendered through the template (tools as ``plan``
    says, and the text a forced tool call is primed with after it)."""
    model = state.model
    if plan is not None:
        try:
            text = model.chat_prompt(plan.messages([dict(m) for m in request.messages]),
                                     plan.template_tools) + (plan.prefix or "")
        except Exception as exc:  # the template's own error (jinja2 raise_exception)
            raise invalid_param("messages", f"the chat template refused the messages: {exc}") \
                from exc
        return model.encode(text)
    if isinstance(request.prompt, tuple):
        return known_token_ids(request.prompt, int(model.tokenizer.get_vocab_size()))
    return model.encode(request.prompt or "")


@contextlib.asynccontextmanager
async def admitted(engine: EngineState, generation: GenerationRequest
                   ) -> AsyncIterator[Admission]:
    """The request admitted until the block ends (its row or queue place is given back
    then, whatever happened)."""
    with contextlib.ExitStack() as admission:
        async with engine.slot.lock:
            state = await model_for(engine, generation.model)
            plan = plan_tools(generation.tools, generation.tool_choice,
                              state.model.template_reads_tools) if generation.is_chat else None
            ids = _prompt_ids(state, generation, plan)
            # 400 when the prompt does not fit (unless the live policy lets it evict to
            # make room); the core checks again when it starts, under the policy then
            sampling_params(generation.sampling, len(ids), state.ctx_size,
                            state.model.allow_evict)
            try:
                admission.enter_context(engine.slot.admit())
            except QueueFull as exc:
                engine.stats.rejected += 1
                raise ApiError(503, f"The engine is busy: {exc}; retry in "
                                    f"{exc.retry_after_s} s.", kind="server_error",
                               code="queue_full",
                               headers={"Retry-After": str(exc.retry_after_s)}) from exc
        if plan is not None and plan.json_start is not None:
            generation = replace(generation, sampling=replace(generation.sampling,
                                                              json_start=plan.json_start))
        yield Admission(state, ids, generation, plan)


async def accounted(request: web.Request, engine: EngineState, state: LoadedState,
                    answer: Callable[[], Awaitable[tuple[web.StreamResponse, Outcome | None]]]
                    ) -> web.StreamResponse:
    """Runs ``answer`` (which returns the response and the generation's outcome, None when
    it failed in-band) under the engine's counters and logs the outcome."""
    engine.stats.started()
    started = time.perf_counter()
    try:
        response, outcome = await answer()
    except (asyncio.CancelledError, ConnectionResetError):
        engine.stats.cancelled += 1
        log.info("%s cancelled: client went away", request.path)
        raise
    except Exception:
        engine.stats.failed += 1
        raise
    if outcome is not None:
        engine.stats.finished(outcome)
        timings = outcome.timings
        log.info("%s model=%s prompt_tokens=%d completion_tokens=%d finish=%s "
                 "queue_ms=%.1f ttft_ms=%.1f total_ms=%.1f", request.path, state.name,
                 outcome.prompt_tokens, outcome.completion_tokens, outcome.finish_reason,
                 timings.queue_ms, timings.queue_ms + timings.prompt_ms,
                 (time.perf_counter() - started) * 1000.0)
    return response


def event_stream() -> web.StreamResponse:
    """An SSE response, unbuffered on the way (``X-Accel-Buffering``)."""
    return web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})

