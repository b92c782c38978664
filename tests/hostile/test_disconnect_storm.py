"""A disconnect storm through ``inferos serve`` on the real embedded engine: 32 streaming
chats, each client hanging up before its answer, after the response head, or after one to
three events, by reset or by an orderly close. The engine must stop generating for all of
them (nothing decoding, prefilling or queued, every KV buffer back in the pool, no request
run to its end), and the next clients must be served as usual."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.engine.engine_process import sse_events
from tests.hostile.raw_client import hang_up, open_chat, read_events
from tests.hostile.serve_process import Serve, chat, idle, poll, serve_embedded

pytestmark = [pytest.mark.model, pytest.mark.slow]

STREAMS = 32
MAX_TOKENS = 256
# Greedy, and long: this prompt runs to max_tokens (checked first), so a stream the engine
# kept generating after its client left would finish and be counted as completed.
PROMPT = "Write a very long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serve_embedded(tmp_path_factory.mktemp("storm")) as running:
        yield running


async def _client(serve: Serve, index: int) -> tuple[int, bytes, int]:
    reader, writer = await open_chat(serve.proxy, chat(PROMPT, MAX_TOKENS))
    wanted = index % 4  # 0: gone before any answer; else 1-3 events (a head for 1+)
    status, seen = (b"", 0) if wanted == 0 else await read_events(reader, wanted)
    hang_up(writer, reset=index % 2 == 0)
    return index, status, seen


def _counters(stats: dict[str, Any]) -> dict[str, int]:
    return {name: int(stats[name]) for name in ("total_requests", "completed_requests",
                                                "cancelled_requests", "failed_requests",
                                                "total_output_tokens")}


def test_the_engine_stops_for_every_client_that_hung_up(serve: Serve) -> None:
    first = httpx.post(serve.proxy + "/api/v1/chat/completions",
                       json=chat(PROMPT, MAX_TOKENS, stream=False), timeout=300).json()
    assert first["choices"][0]["finish_reason"] == "length", first  # the premise
    before = _counters(serve.engine_stats())

    async def storm() -> list[tuple[int, bytes, int]]:
        return await asyncio.wait_for(
            asyncio.gather(*(_client(serve, i) for i in range(STREAMS))), 300)

    results = asyncio.run(storm())
    for index, status, seen in results:
        if index % 4:
            assert status.startswith(b"HTTP/1.1 200"), (index, status)
            assert seen == index % 4, (index, seen)

    stats = poll(serve.engine_stats, idle, "engine idle with its KV pool whole")
    after = _counters(stats)
    delta = {name: after[name] - before[name] for name in after}
    # Every request that reached the engine was cancelled; none ran on to its end.
    assert delta["completed_requests"] == 0 and delta["failed_requests"] == 0, delta
    assert delta["cancelled_requests"] == delta["total_requests"] > 0, delta
    assert delta["total_requests"] >= STREAMS * 3 // 4, delta  # all that got events
    assert delta["total_output_tokens"] < STREAMS * MAX_TOKENS // 4, delta

    # Served as usual afterwards: a stream to [DONE], and a plain answer.
    with httpx.stream("POST", serve.proxy + "/api/v1/chat/completions",
                      json=chat("Say hello.", 8), timeout=120) as response:
        assert response.status_code == 200
        events = sse_events(response.iter_lines())
    assert events and events[-1] == "[DONE]", events[-3:]
    answer = httpx.post(serve.proxy + "/api/v1/chat/completions",
                        json=chat("What is the capital of France?", 8, stream=False),
                        timeout=120)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert serve.health()["status"] == "ok"
    assert "Traceback" not in serve.log(), serve.log()[-4000:]
