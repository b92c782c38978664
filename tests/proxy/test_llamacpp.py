"""Through the proxy, the official OpenAI SDK against the real llama.cpp server gets what it
gets directly: same text, same token counts; and the proxy measured it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends import RunningServer
from tests.proxy.conftest import ProxyFactory

pytestmark = pytest.mark.llamacpp
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PARAMS = {"model": "smollm2", "temperature": 0, "seed": 7, "max_tokens": 24}


def _client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="lemonade", max_retries=0)


async def _chat(base: str) -> tuple[str, int, int]:
    async with _client(base) as client:
        r = await client.chat.completions.create(messages=MESSAGES, **PARAMS)  # type: ignore[call-overload]
    assert r.usage is not None
    return r.choices[0].message.content or "", r.usage.prompt_tokens, r.usage.completion_tokens


async def _chat_stream(base: str) -> tuple[str, int, tuple[int, int] | None]:
    text, chunks, usage = "", 0, None
    async with _client(base) as client:
        stream = await client.chat.completions.create(
            messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **PARAMS)  # type: ignore[call-overload]
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                chunks += 1
            if chunk.usage is not None:
                usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return text, chunks, usage


async def _completion(base: str, stream: bool) -> str:
    async with _client(base) as client:
        if not stream:
            r = await client.completions.create(prompt="The capital of France is", **PARAMS)  # type: ignore[call-overload]
            return r.choices[0].text
        text = ""
        async for chunk in await client.completions.create(  # type: ignore[call-overload]
                prompt="The capital of France is", stream=True, **PARAMS):
            text += chunk.choices[0].text if chunk.choices else ""
        return text


async def test_chat_and_completions_match_direct_streaming_or_not(
    llama_server: RunningServer, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(llama_server.url)
    direct, via = await _chat(llama_server.url), await _chat(proxy.proxy_url)
    assert via == direct
    assert "Paris" in via[0]
    direct_s, via_s = await _chat_stream(llama_server.url), await _chat_stream(proxy.proxy_url)
    assert via_s == direct_s
    assert via_s[0] == direct[0]  # streamed text equals the non-streamed answer
    for stream in (False, True):
        assert await _completion(proxy.proxy_url, stream) == await _completion(
            llama_server.url, stream)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def test_metrics_show_the_request_with_ttft_and_token_counts(
    llama_server: RunningServer, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(llama_server.url)
    _, prompt_tokens, completion_tokens = await _chat(proxy.proxy_url)
    _, chunks, usage = await _chat_stream(proxy.proxy_url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/metrics") as resp:
            text = await resp.text()
    samples = _samples(text)
    labels = frozenset({("model", "smollm2"), ("route", "chat/completions")})
    # TTFT and decode times exist only for the streamed request
    assert samples[("gen_ai_server_time_to_first_token_seconds_count", labels)] == 1
    assert samples[("gen_ai_server_time_to_first_token_seconds_sum", labels)] > 0
    assert samples[("gen_ai_server_time_per_output_token_seconds_count", labels)] == 1
    assert samples[("inferos_inter_token_gap_seconds_count", labels)] == chunks - 1
    duration = labels | {("status", "200")}
    assert samples[("gen_ai_server_request_duration_seconds_count", frozenset(duration))] == 2
    # token counts: the non-streamed answer's usage, plus the streamed one's (llama-cpp-python
    # sends no usage on streams, so the proxy counts its content chunks)
    output = frozenset(labels | {("gen_ai_token_type", "output")})
    assert samples[("gen_ai_client_token_usage_count", output)] == 2
    streamed_output = usage[1] if usage is not None else chunks
    assert samples[("gen_ai_client_token_usage_sum", output)] == (
        completion_tokens + streamed_output)
    source = "usage" if usage is not None else "counted"
    assert samples[("inferos_token_count_source_total",
                    frozenset({("gen_ai_token_type", "output"), ("source", source)}))] >= 1
    inputs = frozenset(labels | {("gen_ai_token_type", "input")})
    assert samples[("gen_ai_client_token_usage_count", inputs)] == 2
    assert samples[("gen_ai_client_token_usage_sum", inputs)] >= prompt_tokens
    assert samples[("inferos_passthrough", frozenset())] == 0
    # no prompt or completion text anywhere in the exposition
    assert "capital" not in text and "Paris" not in text


async def test_client_disconnect_stops_generation_upstream(
    llama_server: RunningServer, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(llama_server.url)
    marker = "Disconnected from client"
    seen_before = llama_server.log().count(marker)
    async with _client(proxy.proxy_url) as client:
        stream = await client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=1500, temperature=0, stream=True)
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        await stream.close()
    # llama-cpp-python's server logs this line when it notices the closed connection and
    # abandons the generation; had the proxy kept reading, it would generate 1500 tokens.
    deadline = time.monotonic() + 60
    while llama_server.log().count(marker) == seen_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert llama_server.log().count(marker) == seen_before + 1
    assert proxy.runtime.in_flight == 0
