"""Parsing and validating the bodies of ``chat/completions``, ``completions`` and ``load``.

Contract: a parser takes the decoded JSON body and returns a frozen value, or raises
``ApiError`` 400 naming the offending field. Parameters a request leaves out take
llama.cpp's server defaults (engine/sampling_defaults.py). Fields this engine does not use
(``id_slot``, ``repeat_last_n``, ``chat_template_kwargs``, ``presence_penalty``…) are
accepted and ignored, as Lemonade forwards them to backends that may not know them either.
Booleans are not numbers here: ``"max_tokens": true`` is rejected, and neither are NaN or
the infinities (Python's ``json`` reads them although JSON has no such values).

A body is refused before any field is read when it is nested deeper than the decoder
recurses (400 ``invalid_json``) or holds a lone UTF-16 surrogate (``"\\ud800"``, which no
Unicode text contains and the tokenizer cannot encode: 400 ``invalid_value`` naming the
field).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from inferos.engine.api_errors import ApiError, invalid_param, invalid_token_id
from inferos.engine.sampling_defaults import DEFAULTS
from inferos.engine.tool_calls import ToolChoice, parse_tools

# OpenAI's documented range; llama.cpp accepts more but the SDKs validate to this.
MAX_TEMPERATURE = 2.0
# Lemonade's names (``user.Qwen2.5-0.5B-Instruct-GGUF``) are tens of characters; a longer
# one is refused before it is looked up or echoed in an error message.
MAX_MODEL_NAME = 256
# OpenAI's bound for chat's top_logprobs (completions' logprobs: 5); llama.cpp's n_probs
# has none, so the larger one serves both.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Sampling:
    """What shapes one generation. ``max_tokens`` None means: the default cap
    (``DEFAULTS.max_tokens``), or the context's end if that comes first. ``logprobs``:
    None for none, n for the chosen token's and the n most likely alternatives'."""

    max_tokens: int | None = None
    temperature: float = DEFAULTS.temperature
    top_p: float = DEFAULTS.top_p
    top_k: int = DEFAULTS.top_k
    seed: int = DEFAULTS.seed
    repeat_penalty: float = DEFAULTS.repeat_penalty
    stop: tuple[str, ...] = ()
    min_p: float = DEFAULTS.min_p
    logprobs: int | None = None
    cache_prompt: bool = True
    # Set for an answer that is a JSON object (engine/tool_calls.py): the text it starts
    # from; generation ends where the object closes.
    json_start: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One ``chat/completions`` (``messages``) or ``completions`` (``prompt``) request."""

    model: str | None
    stream: bool
    include_usage: bool
    sampling: Sampling
    messages: tuple[dict[str, Any], ...] = ()
    prompt: str | tuple[int, ...] | None = None
    echo: bool = False  # completions: the prompt's text comes back before the completion
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: ToolChoice = ToolChoice("none")

    @property
    def is_chat(self) -> bool:
        return self.prompt is None


@dataclass(frozen=True)
class LoadRequest:
    """``POST load``: None for an option means "as in effect, or the server's default"."""

    model_name: str
    ctx_size: int | None = None
    provider: str | None = None
    threads: int | None = None
    kv_precision: str | None = None
    graph_optimization: str | None = None


async def json_body(request: web.Request, *, optional: bool = False) -> Any:
    """The request's body, decoded; 400 when it is not JSON (``optional``: empty is {})."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}",
                       code="invalid_json") from exc
    except RecursionError as exc:
        raise ApiError(400, "The request body is not valid JSON here: it is nested too deeply.",
                       code="invalid_json") from exc
    if _SURROGATE_HINT.search(raw):
        where = _lone_surrogate_at(body)
        if where is not None:
            raise invalid_param(where, f"'{where}' contains a lone UTF-16 surrogate, which is "
                                       "not a Unicode character; send valid UTF-8 text")
    return body


# What a lone surrogate can come from: a \uD800-\uDFFF escape, or its UTF-8-like bytes
# (json decodes bytes with "surrogatepass"), or a NUL (UTF-16/32 bodies, also accepted by
# json). One C pass over the body; only a hit pays for the walk.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object (400 otherwise)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def request_model(body: dict[str, Any]) -> str | None:
    """The ``model`` a request names, None for the loaded or default one."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid_param("model", "'model' must be a string")
    if model is not None and len(model) > MAX_MODEL_NAME:
        raise invalid_param("model", f"'model' is longer than {MAX_MODEL_NAME} characters")
    return model or None


def required_model_name(body: dict[str, Any]) -> str:
    """``model_name`` (or ``model``) of load, pull and delete: required."""
    name = body.get("model_name", body.get("model"))
    if not isinstance(name, str) or not name:
        raise invalid_param("model_name", "'model_name' is required and must be a string")
    if len(name) > MAX_MODEL_NAME:
        raise invalid_param("model_name",
                            f"'model_name' is longer than {MAX_MODEL_NAME} characters")
    return name


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate_at(body: Any) -> str | None:
    """The path (``messages[0].content``) of the first key or string holding a lone
    surrogate; None when there is none. Iterative: depth costs no stack."""
    pending: list[tuple[str, Any]] = [("(body)", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            if not _is_text(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    return path
                pending.append((key if path == "(body)" else f"{path}.{key}", item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float,
            *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise invalid_param(name, f"'{name}' must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise invalid_param(name, f"'{name}' must be a finite number, got {value}")
    if number < low or number > high or (low_open and number == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise invalid_param(name, f"'{name}' must be in {bound}, got {value}")
    return number


def _integer(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_param(name, f"'{name}' must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise invalid_param(name, f"'{name}' must be at least {minimum}, got {value}")
    return value


def _boolean(body: dict[str, Any], name: str, *, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_param(name, f"'{name}' must be true or false, got {value!r}")
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid_param("stop", "'stop' must be a string or a list of strings")
    return tuple(s for s in value if s)


def _top_count(body: dict[str, Any], name: str) -> int:
    value = _integer(body, name, minimum=0) or 0
    if value > MAX_TOP_LOGPROBS:
        raise invalid_param(name, f"'{name}' must be at most {MAX_TOP_LOGPROBS}, got {value}")
    return value


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """Chat: ``logprobs`` true, with ``top_logprobs`` alternatives; completions (OpenAI's
    legacy shape): ``logprobs`` is the number of alternatives."""
    if chat:
        wanted = _boolean(body, "logprobs")
        if body.get("top_logprobs") is not None and not wanted:
            raise invalid_param("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        return _top_count(body, "top_logprobs") if wanted else None
    if body.get("logprobs") is None:
        return None
    return _top_count(body, "logprobs")


def _sampling(body: dict[str, Any], chat: bool) -> Sampling:
    # max_completion_tokens is the newer OpenAI name; it wins when both are sent.
    max_tokens = _integer(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", minimum=1)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_param("seed", f"'seed' must be an integer, got {type(seed).__name__}")
    top_k = _integer(body, "top_k", minimum=0)
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", DEFAULTS.temperature, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", DEFAULTS.top_p, 0.0, 1.0, low_open=True),
        top_k=DEFAULTS.top_k if top_k is None else top_k,
        seed=DEFAULTS.seed if seed is None else seed,
        repeat_penalty=_number(body, "repeat_penalty", DEFAULTS.repeat_penalty, 0.0, 10.0,
                               low_open=True),
        stop=_stop(body),
        min_p=_number(body, "min_p", DEFAULTS.min_p, 0.0, 1.0),
        logprobs=_logprobs(body, chat),
        cache_prompt=_boolean(body, "cache_prompt", default=True),
    )


def _common(body: Any, chat: bool) -> tuple[str | None, bool, bool, Sampling]:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    model = request_model(body)
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid_param("n", "only n=1 is supported")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid_param("stream_options", "'stream_options' must be an object")
    include_usage = stream and bool((options or {}).get("include_usage", False))
    return model, stream, include_usage, _sampling(body, chat)


def _message(index: int, message: Any) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise invalid_param(param, f"'{param}' must be an object with a string 'role'")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        # Content parts: only text exists for this model; other parts are refused, not dropped.
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise invalid_param(f"{param}.content",
                                    "only text content parts are supported by this model")
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise invalid_param(f"{param}.content", "'content' must be a string or a list of parts")
    return {**message, "content": content}


def parse_chat(body: Any) -> GenerationRequest:
    model, stream, include_usage, sampling = _common(body, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_param("messages", "'messages' must be a non-empty list")
    tools, tool_choice = parse_tools(body)
    return GenerationRequest(model=model, stream=stream, include_usage=include_usage,
                             sampling=sampling,
                             messages=tuple(_message(i, m) for i, m in enumerate(messages)),
                             tools=tools, tool_choice=tool_choice)


def parse_completion(body: Any) -> GenerationRequest:
    model, stream, include_usage, sampling = _common(body, chat=False)
    prompt = body.get("prompt")
    parsed: str | tuple[int, ...]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        parsed = prompt[0]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
        parsed = tuple(prompt)
    elif isinstance(prompt, str):
        parsed = prompt
    else:
        raise invalid_param("prompt", "'prompt' must be a string, a list of one string, "
                                      "or a list of token ids")
    echo = _boolean(body, "echo")
    if echo and sampling.logprobs is not None:
        # OpenAI's echo with logprobs scores the prompt's own tokens (lm-eval's
        # loglikelihood does this); the engine computes logits for generated tokens only,
        # and a wrong or missing score would be worse than a clear no.
        raise invalid_param("echo", "'echo' with 'logprobs' (log-probabilities of the "
                                    "prompt's tokens) is not supported by this engine")
    return GenerationRequest(model=model, stream=stream, include_usage=include_usage,
                             sampling=sampling, prompt=parsed, echo=echo)


def known_token_ids(prompt: tuple[int, ...], vocab: int) -> list[int]:
    """A token-id prompt, checked against the model's vocabulary (400 naming the first id
    outside it: such an id would index past the embedding table)."""
    for index, token in enumerate(prompt):
        if token >= vocab:
            raise invalid_token_id(token, index, vocab)
    return list(prompt)


def _optional_str(body: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise invalid_param(name, f"'{name}' must be a non-empty string")
        return value
    return None


def parse_load(body: Any) -> LoadRequest:
    """``ctx_size`` -1 (Lemonade's "automatic") and 0 mean the server's default."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    name = required_model_name(body)
    ctx_size = body.get("ctx_size")
    if ctx_size is not None:
        if isinstance(ctx_size, bool) or not isinstance(ctx_size, int) or ctx_size < -1:
            raise invalid_param("ctx_size", "'ctx_size' must be a positive integer or -1")
        if ctx_size in (-1, 0):
            ctx_size = None
    return LoadRequest(
        model_name=name,
        ctx_size=ctx_size,
        provider=_optional_str(body, "provider", "execution_provider"),
        threads=_integer(body, "threads", minimum=1),
        kv_precision=_optional_str(body, "kv_precision"),
        graph_optimization=_optional_str(body, "graph_optimization"),
    )
