"""Several clients at once are all answered correctly; a client that leaves frees its KV."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, kv_buffers_in_use

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "Water boils at", "The largest planet is",
           "Cats are", "The sun rises in the"]


def _body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, **fields}


async def test_concurrent_clients_get_the_answers_they_get_alone(engine: RunningServer) -> None:
    url = engine.url + "/api/v1/completions"
    async with httpx.AsyncClient(timeout=300) as client:
        alone = [(await client.post(url, json=_body(p))).json() for p in PROMPTS]

        async def streamed(prompt: str) -> str:
            pieces = []
            async with client.stream("POST", url, json=_body(prompt, stream=True)) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        pieces += [c["text"] for c in chunk["choices"]]
            return "".join(pieces)

        together = await asyncio.gather(
            *[client.post(url, json=_body(p)) for p in PROMPTS],
            *[streamed(p) for p in PROMPTS])
    texts = [a["choices"][0]["text"] for a in alone]
    assert [r.json()["choices"][0]["text"] for r in together[:5]] == texts  # type: ignore
    assert list(together[5:]) == texts
    assert len(set(texts)) > 1  # different prompts, different answers: no cross-talk


def _stats(engine: RunningServer) -> dict[str, Any]:
    return dict(httpx.get(engine.url + "/api/v1/stats", timeout=30).json())


def _wait_for(predicate: Any, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _busy(engine: RunningServer) -> bool:
    health = httpx.get(engine.url + "/api/v1/health", timeout=30).json()
    return bool(health["all_models_loaded"] and health["all_models_loaded"][0]["is_busy"])


# Greedy counting goes on for hundreds of tokens: the generation is still running when the
# client leaves, whatever the machine's speed.
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0}


def test_streaming_client_disconnect_stops_generation_and_returns_kv_buffer(
        engine: RunningServer) -> None:
    before = _stats(engine)
    assert kv_buffers_in_use(before) == 0
    with httpx.Client(timeout=300) as client, client.stream(
            "POST", engine.url + "/api/v1/completions", json={**LONG, "stream": True}
    ) as response:
        lines = response.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(4))  # tokens flow
        assert kv_buffers_in_use(_stats(engine)) == 1
    _check_cancelled(engine, before)


def test_waiting_client_disconnect_stops_generation_and_returns_kv_buffer(
        engine: RunningServer) -> None:
    before = _stats(engine)
    body = json.dumps(LONG).encode()
    host, port = engine.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait_for(lambda: _busy(engine))
        assert kv_buffers_in_use(_stats(engine)) == 1
    _check_cancelled(engine, before)


def _check_cancelled(engine: RunningServer, before: dict[str, Any]) -> None:
    _wait_for(lambda: _stats(engine)["cancelled_requests"] == before["cancelled_requests"] + 1)
    _wait_for(lambda: not _busy(engine))
    after = _stats(engine)
    assert kv_buffers_in_use(after) == 0
    assert after["completed_requests"] == before["completed_requests"]
    # The next client is served at once by the freed engine, reusing the pooled buffer.
    answer = httpx.post(engine.url + "/api/v1/completions", json=_body("Hello"), timeout=120)
    assert answer.json()["usage"]["completion_tokens"] == 8
    assert kv_buffers_in_use(_stats(engine)) == 0
