"""The handlers of the engine's Lemonade API, mounted under every prefix by ``server.py``.

Generation endpoints take ``ModelSlot.lock`` for their whole load-tokenize-generate
sequence (generations are serialized), validate everything before the response starts
(so errors keep their status), and stop the generation when the client goes away
(aiohttp cancels the handler). Prompt and completion text is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import onnxruntime as ort
from aiohttp import web

from inferos import __version__
from inferos.engine.api_errors import ApiError, invalid_param, model_not_found
from inferos.engine.api_requests import (
    GenerationRequest,
    json_body,
    parse_chat,
    parse_completion,
    parse_load,
)
from inferos.engine.api_responses import SSE_DONE, ResponseShape, sse
from inferos.engine.completion_run import Outcome, collect, run_completion
from inferos.engine.embeddings import embeddings, reranking
from inferos.engine.engine_state import ENGINE, EngineState
from inferos.engine.generation_admission import Admission, accounted, admitted, event_stream
from inferos.engine.load_options import requested_options
from inferos.engine.model_catalog import RECIPE
from inferos.engine.model_management import delete, halt, log_level, pull
from inferos.engine.model_slot import LoadedState
from inferos.engine.placement import place
from inferos.engine.policy_routes import policy_stats
from inferos.engine.responses_api import responses
from inferos.engine.runtime_stats import memory_report
from inferos.engine.system_info import system_info as system_info_body
from inferos.engine.token_logprobs import RequestLogprobs
from inferos.engine.tool_calls import ToolStream
from inferos.errors import ModelError

log = logging.getLogger(__name__)

# The Lemonade API level this engine serves. Clients such as GAIA check a minimum version
# (10.2.0) in health; the engine's own version is reported as "engine".
LEMONADE_API_VERSION = "11.5.0"


def _device(provider: str) -> str:
    return "cpu" if provider == "CPUExecutionProvider" else "gpu"


def _recipe_options(state: LoadedState) -> dict[str, Any]:
    options = state.options
    return {"ctx_size": options.ctx_size, "provider": options.provider,
            "threads": options.threads, "kv_precision": options.kv_precision,
            "graph_optimization": options.graph_optimization}


def _loaded_entry(engine: EngineState, state: LoadedState) -> dict[str, Any]:
    return {
        "model_name": state.name, "checkpoint": str(state.checkpoint), "recipe": RECIPE,
        "recipe_options": _recipe_options(state), "device": _device(state.model.provider),
        "type": "llm", "backend_url": engine.base_url, "pid": os.getpid(),
        "is_busy": engine.slot.busy, "max_context": state.model.max_context,
        "max_context_window": state.model.max_context,
        "loaded_at": state.loaded_at, "load_number": state.load_number,
    }


async def _generate(request: web.Request,
                    parse: Callable[[Any], GenerationRequest]) -> web.StreamResponse:
    engine = request.app[ENGINE]
    async with admitted(engine, parse(await json_body(request))) as admission:
        return await _respond(request, engine, admission)


def _echoed(admission: Admission) -> str:
    """The prompt's text, for a completion that asks for ``echo``."""
    generation = admission.generation
    if not generation.echo:
        return ""
    if isinstance(generation.prompt, str):
        return generation.prompt
    return admission.state.model.decode(admission.prompt_ids)


async def _respond(request: web.Request, engine: EngineState,
                   admission: Admission) -> web.StreamResponse:
    state, generation = admission.state, admission.generation
    shape = ResponseShape(chat=generation.is_chat, model=state.name)
    logprobs = RequestLogprobs(state.model.tokenizer, chat=generation.is_chat,
                               wanted=generation.sampling.logprobs is not None)
    echo = _echoed(admission)

    async def answer() -> tuple[web.StreamResponse, Outcome | None]:
        if generation.stream:
            return await _stream(request, engine, admission, shape, logprobs, echo)
        outcome, text = await collect(engine.slot, state, admission.prompt_ids,
                                      generation.sampling, logprobs.trail)
        tools = admission.active_tools
        if tools is None:
            return web.json_response(shape.full(echo + text, outcome,
                                                logprobs.take(len(echo)))), outcome
        parsed = tools.parse(text)
        if parsed.tool_calls:
            outcome = replace(outcome, finish_reason="tool_calls")
        return web.json_response(shape.full(parsed.content, outcome, logprobs.take(0),
                                            parsed.tool_calls)), outcome

    return await accounted(request, engine, state, answer)


async def _stream(request: web.Request, engine: EngineState, admission: Admission,
                  shape: ResponseShape, logprobs: RequestLogprobs, echo: str = ""
                  ) -> tuple[web.StreamResponse, Outcome | None]:
    """Streams the generation as SSE; returns the response and the generation's outcome,
    None when it failed in-band."""
    generation = admission.generation
    response = event_stream()
    await response.prepare(request)
    first = shape.first_chunk()
    if first is not None:
        await response.write(sse(first))
    if echo:
        await response.write(sse(shape.text_chunk(echo)))
    sent = len(echo)
    outcome: Outcome | None = None
    plan = admission.active_tools
    tools = None if plan is None else ToolStream(plan)
    try:
        async with contextlib.aclosing(run_completion(engine.slot, admission.state,
                                                      admission.prompt_ids,
                                                      generation.sampling,
                                                      logprobs.trail)) as items:
            async for item in items:
                if isinstance(item, str):
                    text = item if tools is None else tools.push(item)
                    if text:
                        await response.write(sse(shape.text_chunk(text, logprobs.take(sent))))
                        sent += len(text)
                else:
                    outcome = item
    except ApiError as exc:
        # After the 200 the error goes in-band, without [DONE], as Lemonade does.
        engine.stats.failed += 1
        await response.write(sse(exc.body()))
        await response.write_eof()
        return response, None
    assert outcome is not None
    if tools is not None:
        parsed = tools.finish()
        if parsed.content:
            await response.write(sse(shape.text_chunk(parsed.content)))
        if parsed.tool_calls:
            await response.write(sse(shape.tool_calls_chunk(parsed.tool_calls)))
            outcome = replace(outcome, finish_reason="tool_calls")
    await response.write(sse(shape.final_chunk(outcome, logprobs.take(sent, none_if_empty=True))))
    if generation.include_usage:
        await response.write(sse(shape.usage_chunk(outcome)))
    await response.write(SSE_DONE)
    await response.write_eof()
    return response, outcome


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_completion)


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    show_all = request.query.get("show_all", "").lower() in ("1", "true", "yes")
    data = [entry.as_model() for entry in engine.catalog.entries(show_all=show_all)]
    return web.json_response({"object": "list", "data": data})


async def model_info(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = request.match_info["model_id"]
    entry = engine.catalog.find(name)
    if entry is None:
        raise model_not_found(name)
    return web.json_response(entry.as_model())


async def load(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    wanted = parse_load(await json_body(request))
    entry = engine.catalog.find(wanted.model_name)
    if entry is None or not entry.prepared:
        raise model_not_found(wanted.model_name)

    def base() -> Any:
        state = engine.slot.state
        return state.options if state is not None and state.name == entry.id \
            else engine.defaults

    options = requested_options(wanted, base())
    state = engine.slot.state
    reloaded = False
    # The common case (GAIA loads before every chat) answers without queueing behind a
    # generation: nothing would change.
    if not engine.slot.is_in_effect(entry.id, options):
        async with engine.slot.lock:
            options = requested_options(wanted, base())
            try:
                state, reloaded = await engine.slot.load(entry.id, entry.source, options)
            except ValueError as exc:
                raise ApiError(400, f"cannot load '{entry.id}' with these options: {exc}",
                               code="invalid_value") from exc
            except ModelError as exc:
                raise ApiError(500, f"loading '{entry.id}' failed: {exc}", kind="server_error",
                               code="load_failed") from exc
    assert state is not None
    log.info("load %s: %s", state.name, "loaded" if reloaded else "already in effect")
    return web.json_response({
        "status": "success", "model_name": state.name, "checkpoint": str(state.checkpoint),
        "recipe": RECIPE, "recipe_options": _recipe_options(state), "reloaded": reloaded,
        "message": f"Loaded model: {state.name}" if reloaded
        else f"Model {state.name} is already loaded with these options",
    })


async def unload(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await json_body(request, optional=True)
    name = body.get("model_name") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        raise invalid_param("model_name", "'model_name' must be a string")
    async with engine.slot.lock:
        state = engine.slot.state
        if state is None:
            raise ApiError(404, "No model is loaded.", code="model_not_loaded",
                           param="model_name")
        if name and not engine.names_loaded(name):
            raise ApiError(404, f"The model '{name}' is not loaded.", code="model_not_loaded",
                           param="model_name")
        await engine.slot.unload()
    message = f"Model {state.name} unloaded successfully" if name \
        else "All models unloaded successfully"
    return web.json_response({"status": "success", "message": message})


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    state = engine.slot.state
    return web.json_response({
        "status": "ok", "version": LEMONADE_API_VERSION, "engine": f"inferos {__version__}",
        "model_loaded": state.name if state else None,
        "checkpoint_loaded": str(state.checkpoint) if state else None,  # the Python-era field
        "all_models_loaded": [_loaded_entry(engine, state)] if state else [],
        "max_models": {"llm": 1, "embedding": 0, "reranking": 0, "audio": 0, "image": 0},
        # The engine's memory and its budget (engine/memory_budget.py): RSS, weights,
        # batch buffer, parked KV; null where this machine cannot measure a figure.
        "memory": memory_report(state.model if state else None),
    })


async def stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = engine.stats.as_dict()
    state = engine.slot.state
    body["loads"] = engine.slot.loads
    body["policy"] = policy_stats(engine)
    body["scheduler"] = _scheduler_stats(engine)
    if state is not None:
        # The core's own accounting (KV pool, bytes copied, later kv_levels/prefix_cache,
        # which the controller reads) sits beside Lemonade's fields, never over them.
        for key, value in state.model.stats().items():
            body.setdefault(key, value)
    else:
        body["memory"] = memory_report(None)
        body["quality"] = {"delta_ppl_est": None, "calibrated": False, "guard": {
            "max_delta_ppl": engine.slot.policy.max_delta_ppl, "promotions": 0,
            "last_promotion_at": None, "held_blocks": 0, "can_act": False,
            "reason": "no model is loaded"}}
    return web.json_response(body)


def _scheduler_stats(engine: EngineState) -> dict[str, Any] | None:
    """Batch occupancy, queue and speculation, and where prefill and decode run."""
    stats = engine.slot.scheduler_stats()
    state = engine.slot.state
    if stats is None or state is None:
        return None
    stats["queue_wait_ms_p50"] = stats["queue_wait_ms"]["p50"]
    stats["tpot_budget_ms"] = engine.slot.policy.tpot_budget_ms
    stats["speculation"]["enabled"] = engine.slot.policy.speculation
    stats["placement"] = place(engine.slot.policy, tuple(ort.get_available_providers()),
                               state.model.provider).as_dict()
    return stats


async def system_info(request: web.Request) -> web.Response:
    return web.json_response(system_info_body())


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _route_table() -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    return [
        ("POST", "chat/completions", chat_completions),
        ("POST", "completions", completions),
        ("POST", "responses", responses),
        ("POST", "embeddings", embeddings),
        ("POST", "reranking", reranking),
        ("POST", "pull", pull),
        ("POST", "delete", delete),
        ("POST", "halt", halt),
        ("POST", "log-level", log_level),
        ("GET", "models", models),
        ("GET", "models/{model_id:.+}", model_info),
        ("POST", "load", load),
        ("POST", "unload", unload),
        ("GET", "health", health),
        ("GET", "stats", stats),
        ("GET", "system-info", system_info),
        ("GET", "live", live),
    ]


PREFIXES = ("/api/v1", "/api/v0", "/v1", "/v0")


def add_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        for method, path, handler in _route_table():
            app.router.add_route(method, f"{prefix}/{path}", handler)
    app.router.add_get("/live", live)
