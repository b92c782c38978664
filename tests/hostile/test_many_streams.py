"""256 concurrent streams through ``inferos serve`` on the real embedded engine, with the
engine's queue raised (``scheduler.max_queue`` 512) so that none is refused: every one
gets 200 and a complete stream, content then ``[DONE]``, and the engine ends idle with
its KV pool whole. Short prompts and 4 tokens each keep it within two cores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.hostile.serve_process import Serve, chat, idle, poll, serve_embedded

pytestmark = [pytest.mark.model, pytest.mark.slow]

STREAMS = 256
MAX_QUEUE = 512


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    env = {"INFEROS_INFER_OS_SCHEDULER_MAX_QUEUE": str(MAX_QUEUE)}
    with serve_embedded(tmp_path_factory.mktemp("many"), env) as running:
        yield running


async def _stream(client: aiohttp.ClientSession, url: str, index: int
                  ) -> tuple[int, int, list[str]]:
    """Status, content events, and the last payloads of one stream."""
    async with client.post(url + "/api/v1/chat/completions",
                           json=chat(f"Say a word. ({index})", 4)) as response:
        payloads: list[str] = []
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                payloads.append(line[len("data: "):])
        content = 0
        for payload in payloads[:-1]:
            delta: dict[str, Any] = json.loads(payload)["choices"][0]["delta"]
            content += bool(delta.get("content"))
        return response.status, content, payloads[-2:]


def test_256_concurrent_streams_all_complete(serve: Serve) -> None:
    # serve pushes the policy to its engine a moment after start: wait for it to hold.
    poll(serve.engine_stats, lambda s: s["scheduler"]["max_queue"] == MAX_QUEUE,
         "the raised queue in effect")

    async def run() -> list[tuple[int, int, list[str]]]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            return await asyncio.gather(*(_stream(client, serve.proxy, i)
                                          for i in range(STREAMS)))

    results = asyncio.run(run())
    failures = [(i, r) for i, r in enumerate(results)
                if r[0] != 200 or r[1] < 1 or r[2][-1:] != ["[DONE]"]]
    assert not failures, f"{len(failures)} of {STREAMS} failed; first: {failures[:3]}"
    stats = poll(serve.engine_stats, idle, "engine idle with its KV pool whole")
    assert stats["rejected_requests"] == 0 and stats["failed_requests"] == 0, stats
    assert stats["completed_requests"] >= STREAMS, stats
    health = serve.health()
    assert health["status"] == "ok"
    # A busy machine is not a hung controller: the default bound held without a trip.
    assert health["controller"]["failsafe_trips"] == 0, serve.log()[-3000:]
