"""``POST embeddings`` from the model's hidden states, and ``POST reranking``'s refusal.

A generative model embeds as llama.cpp's server embeds one (``--embeddings``): each input
is run alone (no past, no prefix reuse, nothing kept), the final norm's output of every
token is mean-pooled (llama.cpp's ``--pooling mean``) and the vector is L2-normalised
(its default ``embd_normalize`` 2). The graph gives that output because the model is
prepared with onnxruntime-genai's ``include_hidden_states`` (engine/prepare.py, layout 3);
``exclude_lm_head`` would give it without logits, but then the same graph could not
generate, and a second graph would double the weights in memory. A model without the
output answers 400 ``model_cannot_embed``, saying how to prepare it again.

Inputs are a string, a list of strings, a list of token ids or a list of such lists
(OpenAI's four forms); ``encoding_format`` ``float`` (default) or ``base64`` (little-endian
float32, as OpenAI's SDK decodes it); ``dimensions`` only as the model's own size. Each
input must fit the loaded context (400 ``context_length_exceeded`` naming it). A request's
runs hold the model slot's lock from its first input to its last, so the model cannot be
unloaded or swapped under them (every vector of one answer comes from one model): the
generations already admitted go on decoding beside them, a new one is admitted once the
request is answered.

Reranking needs a model trained to score a query against a document (llama.cpp's
``--reranking``, pooling ``rank``: a classification head). A chat model has none, and
cosine similarity of its mean-pooled states is not a reranker's score, so the engine
answers 501 ``reranking_not_supported`` (as llama.cpp's server does without a reranker)
after checking the body, rather than scores that would look right and rank badly.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from aiohttp import web

from inferos.engine.api_errors import ApiError, invalid_param, model_not_found
from inferos.engine.api_requests import json_object, known_token_ids, request_model
from inferos.engine.engine_state import ENGINE
from inferos.engine.generation_admission import model_for
from inferos.engine.model_slot import LoadedState
from inferos.errors import ModelError

MAX_INPUTS = 2048  # OpenAI's bound on inputs per request


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


def _inputs(body: dict[str, Any]) -> list[str | list[int]]:
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif _is_ids(raw):
        items = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) or _is_ids(x) for x in raw):
        items = list(raw)
    else:
        raise invalid_param("input", "'input' must be a string, a list of strings, a list of "
                                     "token ids or a list of token-id lists, and not empty")
    if len(items) > MAX_INPUTS:
        raise invalid_param("input", f"at most {MAX_INPUTS} inputs per request")
    for index, item in enumerate(items):
        if item == "":
            raise invalid_param(f"input[{index}]", "an input must not be empty")
    return items


def _pooled(hidden: np.ndarray) -> np.ndarray:
    vector = hidden.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def _encoded(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _ids(state: LoadedState, item: str | list[int], index: int) -> list[int]:
    model = state.model
    if isinstance(item, str):
        ids = model.encode(item)
    else:
        try:
            ids = known_token_ids(tuple(item), int(model.tokenizer.get_vocab_size()))
        except ApiError as exc:
            raise invalid_param(f"input[{index}]", exc.message) from exc
    if not ids:
        raise invalid_param(f"input[{index}]", "the input has no tokens")
    if len(ids) > state.ctx_size:
        raise ApiError(400, f"input[{index}] has {len(ids)} tokens but the context of the "
                            f"loaded model is {state.ctx_size} tokens.",
                       code="context_length_exceeded", param="input")
    return ids


async def embeddings(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await json_object(request)
    name = request_model(body)
    items = _inputs(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid_param("encoding_format", "'encoding_format' must be float or base64")
    data = []
    tokens = 0
    async with engine.slot.lock:
        state = await model_for(engine, name)
        size = state.model.hidden_size
        if size is None:
            raise ApiError(400, f"'{state.name}' cannot embed: its graph has no hidden_states "
                                "output (prepared before layout 3); run `inferos model "
                                "prepare` again", code="model_cannot_embed", param="model")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != size:
            raise invalid_param("dimensions", f"this model's embeddings have {size} "
                                              "dimensions and cannot be shortened")
        all_ids = [_ids(state, item, i) for i, item in enumerate(items)]
        for index, ids in enumerate(all_ids):
            try:
                hidden = await asyncio.to_thread(state.model.hidden_states, ids)
            except ModelError as exc:
                raise ApiError(500, f"embedding failed: {exc}", kind="server_error",
                               code="embedding_failed") from exc
            tokens += len(ids)
            data.append({"object": "embedding", "index": index,
                         "embedding": _encoded(_pooled(hidden), encoding)})
    return web.json_response({"object": "list", "data": data, "model": state.name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def reranking(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await json_object(request)
    name = request_model(body)
    if not isinstance(body.get("query"), str):
        raise invalid_param("query", "'query' is required and must be a string")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents \
            or not all(isinstance(d, str) for d in documents):
        raise invalid_param("documents", "'documents' must be a non-empty list of strings")
    model = name or (engine.slot.state.name if engine.slot.state else engine.default_model)
    if engine.catalog.find(model) is None:
        raise model_not_found(model)
    raise ApiError(501, f"'{model}' cannot rerank: it is a generative model without a "
                        "reranking (classification) head, and this engine serves no "
                        "reranker model. Use a reranker (Lemonade: a model labelled "
                        "'reranking', on the llamacpp recipe).",
                   kind="not_supported_error", code="reranking_not_supported", param="model")
