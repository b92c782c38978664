"""The OpenAI SDK against the engine, directly and through the proxy (real SmolLM2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import HostPort, ProxySettings
from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, sse_events

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _client(engine: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/api/v1", api_key="lemonade", max_retries=0)


def test_chat_answers_paris_with_usage_and_timings(engine: RunningServer) -> None:
    response = _client(engine).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    choice = response.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 16
    timings = (response.model_extra or {})["timings"]
    # as llama.cpp: prompt tokens evaluated plus those reused from the KV cache
    assert timings["prompt_n"] + timings["cache_n"] == response.usage.prompt_tokens
    assert timings["predicted_n"] == response.usage.completion_tokens
    assert timings["predicted_per_second"] >= 0 and timings["prompt_ms"] > 0


def _stream_chat(client: openai.OpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True,
        stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("sampling", [{"temperature": 0},
                                      {"temperature": 0.9, "top_p": 0.9, "seed": 7,
                                       "extra_body": {"top_k": 40}}])
def test_chat_streamed_equals_not_streamed(engine: RunningServer,
                                           sampling: dict[str, Any]) -> None:
    client = _client(engine)
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION,
                                           max_tokens=24, **sampling)
    text, chunks = _stream_chat(client, max_tokens=24, **sampling)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completions_streamed_equals_not_streamed(engine: RunningServer) -> None:
    client = _client(engine)
    prompt = "The three primary colors are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert whole.choices[0].text.strip()
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_raw_stream_ends_finish_chunk_then_usage_then_done(engine: RunningServer) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}, "id_slot": 0, "repeat_last_n": 64,
            "repeat_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
    with httpx.stream("POST", engine.url + "/api/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer lemonade"}, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    assert events[-1] == "[DONE]"
    usage_chunk, finish_chunk = events[-2], events[-3]
    assert isinstance(usage_chunk, dict) and isinstance(finish_chunk, dict)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == finish_chunk["timings"]["predicted_n"]
    assert finish_chunk["choices"][0]["finish_reason"] in ("stop", "length")
    assert set(finish_chunk["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n",
                                            "predicted_ms", "predicted_per_second",
                                            "prompt_per_second", "cache_n"}
    first = events[0]
    assert isinstance(first, dict) and first["choices"][0]["delta"]["role"] == "assistant"
    middle = [e for e in events[1:-3] if isinstance(e, dict)]
    assert all(e["choices"][0]["finish_reason"] is None for e in middle)


def test_stream_without_include_usage_has_no_usage_chunk(engine: RunningServer) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", engine.url + "/v1/chat/completions", json=body,
                      timeout=120) as response:
        events = sse_events(response.iter_lines())
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert isinstance(last, dict) and last["choices"][0]["finish_reason"] == "length"
    assert not any(isinstance(e, dict) and e.get("choices") == [] for e in events)


def test_stop_string_ends_generation_and_is_not_returned(engine: RunningServer) -> None:
    client = _client(engine)
    free = client.chat.completions.create(model=MODEL, messages=QUESTION,
                                          max_tokens=16, temperature=0)
    text = free.choices[0].message.content or ""
    assert "Paris" in text
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION,
                                         max_tokens=16, temperature=0, stop=["Paris", "zzz"])
    assert cut.choices[0].message.content == text[:text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"
    streamed, _ = _stream_chat(client, max_tokens=16, temperature=0, stop="Paris")
    assert streamed == text[:text.index("Paris")]


def test_every_prefix_serves_the_api(engine: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}
    for prefix in ("/api/v1", "/api/v0", "/v1"):
        response = httpx.post(engine.url + prefix + "/completions", json=body, timeout=120)
        assert response.status_code == 200, prefix
        assert response.json()["usage"]["completion_tokens"] == 2


@pytest.fixture
async def proxy(engine: RunningServer) -> AsyncIterator[ProxyServer]:
    settings = ProxySettings(upstream=engine.url, listen=HostPort("127.0.0.1", 0),
                             admin=HostPort("127.0.0.1", 0))
    async with ProxyServer(settings) as server:
        yield server


async def test_through_the_proxy_same_answers(engine: RunningServer,
                                              proxy: ProxyServer) -> None:
    direct = openai.AsyncOpenAI(base_url=engine.url + "/api/v1", api_key="lemonade")
    proxied = openai.AsyncOpenAI(base_url=proxy.proxy_url + "/api/v1", api_key="lemonade")
    results = []
    for client in (direct, proxied):
        chat = await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                    max_tokens=16, temperature=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
            stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        completion = await client.completions.create(model=MODEL, prompt="Once upon a time",
                                                     max_tokens=8, temperature=0)
        results.append((chat.choices[0].message.content, chat.usage.completion_tokens,
                        text, chunks[-1].usage.completion_tokens,
                        completion.choices[0].text))
        await client.close()
    assert results[0] == results[1]
    assert "Paris" in (results[0][0] or "")
    assert results[0][0] == results[0][2]
