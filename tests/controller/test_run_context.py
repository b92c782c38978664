"""Run-contexts from request facts: nothing a client sends can raise in the controller's
loop (unreadable facts give None, counted as dropped), reading a body has a bounded cost,
a client's own /load is recognised, and POST /v1/run-context takes only sane values."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferos.controller.run_context import (
    MAX_JSON_VALUES,
    MAX_READ_BYTES,
    MAX_TOKENIZED_CHARS,
    RunContext,
    client_touched_backend,
    derive,
)
from inferos.errors import ConfigError
from inferos.proxy.pending_context import RequestFacts

CHAT = "chat/completions"


def _facts(body: bytes | dict[str, Any], route: str = CHAT) -> RequestFacts:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RequestFacts(route, raw, concurrency=2)


def _chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], **extra}


def test_a_readable_request_gives_its_run_context() -> None:
    ctx = derive(_facts(_chat("x" * 400, max_tokens=3, stream=True)), {})
    assert ctx is not None
    assert (ctx.model, ctx.seq_len, ctx.seq_len_source) == ("smollm2", 100, "estimate")
    assert ctx.max_tokens == 3 and ctx.stream and ctx.concurrency == 2


def test_prompt_text_keeps_its_order_across_messages_parts_and_prompts() -> None:
    seen: list[str] = []

    def counter(text: str) -> int:
        seen.append(text)
        return 7

    body = {"model": "m", "messages": [
        {"role": "system", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image"}]}],
        "prompt": ["c", ["d"]], "input": {"content": "e", "text": "f"}}
    ctx = derive(_facts(body), {"m": counter})
    assert ctx is not None and (ctx.seq_len, ctx.seq_len_source) == (7, "tokenizer")
    assert seen == ["a\nb\nc\nd\ne\nf"]


def test_deep_nesting_is_dropped_not_raised() -> None:
    # Before the fix: RecursionError inside derive, in the fast loop -> fail-safe trip.
    assert derive(_facts(b"[" * 100_000), {}) is None
    assert derive(_facts(b'{"messages":' + b"[" * 100_000 + b"}"), {}) is None
    # as deep as json itself reads: walked without recursion
    deep = b'{"model":"m","messages":' + b"[" * 900 + b'"hi"' + b"]" * 900 + b"}"
    ctx = derive(_facts(deep), {})
    assert ctx is not None and ctx.seq_len == 1


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\xfa not utf-8",
    b'{"model": "m", "messages": "\xc3\x28"}',
    b'{"max_tokens": ' + b"9" * 5000 + b"}",      # past Python's int digits limit
    b"", b"null", b"[]", b'"text"', b"{", b"NaN",
])
def test_unreadable_bodies_are_dropped(raw: bytes) -> None:
    assert derive(_facts(raw), {}) is None


def test_wrong_types_are_ignored_field_by_field() -> None:
    body = {"model": ["x"], "messages": {"content": 5}, "max_tokens": 1e400,
            "max_completion_tokens": True, "stream": "yes", "prompt": [None, 1.5, {}]}
    ctx = derive(_facts(body), {})
    assert ctx is not None and ctx.model == "unknown" and ctx.max_tokens is None
    assert not ctx.stream and ctx.seq_len == 1
    long_name = derive(_facts({"model": "m" * 129, "prompt": "hi"}), {})
    assert long_name is not None and long_name.model == "unknown"


def test_a_failing_tokenizer_falls_back_to_the_estimate() -> None:
    def surrogates(text: str) -> int:  # what tokenizers does with a lone surrogate
        raise TypeError("TextInputSequence must be str")

    ctx = derive(_facts(b'{"model":"m","prompt":"a\\ud800bcdefgh"}'), {"m": surrogates})
    assert ctx is not None and (ctx.seq_len, ctx.seq_len_source) == (2, "estimate")
    for nonsense in (-1, "12", None, 2.5):
        def answers(text: str, value: Any = nonsense) -> Any:
            return value

        ctx = derive(_facts({"model": "m", "prompt": "abcd"}), {"m": answers})
        assert ctx is not None and ctx.seq_len_source == "estimate"


def test_reading_cost_is_bounded() -> None:
    # what json would take ~90 ms to build, holding the GIL: not parsed at all
    costly = b'{"messages":[' + b"[]," * (MAX_JSON_VALUES // 2) + b"[]]}"
    assert derive(_facts(costly), {}) is None
    assert derive(_facts(b'{"prompt":"' + b"a" * MAX_READ_BYTES + b'"}'), {}) is None
    # a long prompt is tokenized on its head only, the rest extrapolated
    heads: list[int] = []

    def counter(text: str) -> int:
        heads.append(len(text))
        return len(text) // 2

    ctx = derive(_facts({"model": "m", "prompt": "ab" * MAX_TOKENIZED_CHARS}), {"m": counter})
    assert heads == [MAX_TOKENIZED_CHARS]
    assert ctx is not None and (ctx.seq_len, ctx.seq_len_source) == (MAX_TOKENIZED_CHARS,
                                                                      "estimate")
    many_parts = {"messages": [{"content": "a"}] * 6000}  # 12000 parts > MAX_PROMPT_PARTS
    assert derive(_facts(many_parts), {}) is None


def test_a_clients_load_and_unload_are_not_run_contexts() -> None:
    load = _facts({"model_name": "Qwen3-0.6B-GGUF"}, route="load")
    assert derive(load, {}) is None
    assert client_touched_backend(load) == "Qwen3-0.6B-GGUF"
    assert client_touched_backend(_facts({"model": "other"}, route="load")) == "other"
    assert client_touched_backend(_facts({"model_name": "x"}, route="unload")) is None
    assert client_touched_backend(_facts(b"[" * 100_000, route="load")) is None
    assert client_touched_backend(_facts({"model_name": 3}, route="load")) is None
    assert client_touched_backend(_facts(_chat("hi"))) is None
    assert derive(_facts({"model_name": "x"}, route="unload"), {}) is None


# -- property tests: derive never raises ---------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(["content", "text", "role", "type", "x"]) | st.text(
        max_size=5), inner, max_size=5),
    max_leaves=40)
BODIES = st.fixed_dictionaries({}, optional={
    "model": JSON_VALUES, "messages": JSON_VALUES, "prompt": JSON_VALUES,
    "input": JSON_VALUES, "max_tokens": JSON_VALUES, "max_completion_tokens": JSON_VALUES,
    "stream": JSON_VALUES})


def _flaky_counter(text: str) -> int:
    if len(text) % 3 == 0:
        raise RuntimeError("tokenizer failed")
    return len(text)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=512), route=st.sampled_from([CHAT, "load", "unload", "other"]))
def test_derive_never_raises_on_any_bytes(raw: bytes, route: str) -> None:
    facts = RequestFacts(route, raw, concurrency=1)
    assert derive(facts, {"unknown": _flaky_counter}) is None or route == CHAT
    client_touched_backend(facts)


@settings(max_examples=300, deadline=None)
@given(body=BODIES)
def test_derive_never_raises_on_any_json(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    ctx = derive(_facts(raw), {"unknown": _flaky_counter, "m": _flaky_counter})
    assert ctx is not None and ctx.seq_len >= 1
    assert ctx.max_tokens is None or (isinstance(ctx.max_tokens, int) and ctx.max_tokens >= 0)


# -- POST /v1/run-context -------------------------------------------------------------------
def test_from_api_takes_a_complete_context() -> None:
    ctx = RunContext.from_api({"seq_len": 900, "batch": 2, "target_ftl_ms": 200,
                               "quality_budget": 0.05, "model": "smollm2",
                               "max_tokens": 64, "stream": True})
    assert (ctx.seq_len, ctx.batch, ctx.seq_len_source) == (900, 2, "caller")
    assert ctx.max_tokens == 64 and ctx.stream and ctx.model == "smollm2"


@pytest.mark.parametrize(("body", "param"), [
    ({"batch": 1}, "seq_len"),
    ({"seq_len": -1, "batch": 1}, "seq_len"),
    ({"seq_len": True, "batch": 1}, "seq_len"),
    ({"seq_len": 2**70, "batch": 1}, "seq_len"),
    ({"seq_len": 1, "batch": 1.5}, "batch"),
    ({"seq_len": 1, "batch": 1, "target_ftl_ms": math.nan}, "target_ftl_ms"),
    ({"seq_len": 1, "batch": 1, "quality_budget": math.inf}, "quality_budget"),
    ({"seq_len": 1, "batch": 1, "max_tokens": 2**70}, "max_tokens"),
    ({"seq_len": 1, "batch": 1, "stream": "yes"}, "stream"),
    ({"seq_len": 1, "batch": 1, "model": ""}, "model"),
    ({"seq_len": 1, "batch": 1, "extra": 2}, "extra"),
    ([1, 2], "(body)"),
])
def test_from_api_names_the_bad_field(body: Any, param: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunContext.from_api(body)
    assert caught.value.key == param


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(
    st.sampled_from(["seq_len", "batch", "target_ftl_ms", "quality_budget", "model",
                     "max_tokens", "stream"]), JSON_VALUES, max_size=7) | JSON_VALUES)
def test_from_api_raises_only_config_errors(body: Any) -> None:
    try:
        RunContext.from_api(body)
    except ConfigError:
        pass
