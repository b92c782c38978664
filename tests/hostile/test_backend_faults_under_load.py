"""The engine child killed outright (SIGKILL), or frozen (SIGSTOP), while streams run
through ``inferos serve``. Killed:
no client is left hanging (each is bounded by its own timeout and ends: with [DONE], an
error event, or the connection closed), serve lives on and says what happened in
``/v1/health``, starts its managed engine again, and answers as before.

What serve does (controller/controller.py ``_watch_backend``): it sees the child's exit,
trips the fail-safe to passthrough ("managed backend exited with code -9"), logs
``backend_exited``, and restarts the engine on the last good settings (any free port);
the fail-safe ends passthrough after ``infer_os.failsafe.recover_after_s`` of health.
What the clients see: every running stream gets the proxy's SSE error event
(``upstream_disconnect``) and ends, without ``[DONE]``; a request sent into the outage
gets 502 ``upstream_unavailable`` (or is served by the new engine)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hostile.serve_process import Serve, chat, idle, poll, serve_embedded

pytestmark = [pytest.mark.model, pytest.mark.slow]

STREAMS = 6
CLIENT_TIMEOUT_S = 120.0
PROMPT = "Write a very long story about a dragon who learns to bake bread."


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    with serve_embedded(tmp_path, {"INFEROS_INFER_OS_FAILSAFE_RECOVER_AFTER_S": "2"}) as s:
        yield s


async def _stream(client: httpx.AsyncClient, url: str, started: asyncio.Event,
                  counter: list[int], max_tokens: int = 1024) -> str:
    """How the stream ended: "done"; "error_event" (an SSE error); "ended" (the body
    ended in order, without [DONE]); "cut" (the connection closed mid-body)."""
    try:
        async with client.stream("POST", url + "/api/v1/chat/completions",
                                 json=chat(PROMPT, max_tokens)) as response:
            if response.status_code != 200:
                return f"status_{response.status_code}"
            last = ""
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    counter[0] += 1
                    if counter[0] >= STREAMS:
                        started.set()
                    last = line[len("data: "):]
                    if last != "[DONE]" and "error" in json.loads(last):
                        return "error_event"
            return "done" if last == "[DONE]" else "ended"
    except httpx.RemoteProtocolError:
        return "cut"


def _events(serve: Serve) -> list[str]:
    folder = serve.log_path.parent / "logs"
    return [json.loads(line)["event"] for f in folder.glob("events_*")
            for line in f.read_text().splitlines()]


def test_kill_9_of_the_engine_under_load(serve: Serve) -> None:
    child = serve.engine_child()

    async def load() -> tuple[list[str], int | str]:
        started = asyncio.Event()
        counter = [0]
        timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
        async with httpx.AsyncClient(timeout=timeout,
                                     limits=httpx.Limits(max_connections=None)) as client:
            async def kill() -> int:
                await asyncio.wait_for(started.wait(), CLIENT_TIMEOUT_S)
                os.kill(child.pid, signal.SIGKILL)
                # A request sent into the outage gets an answer too, never a hang.
                during = await client.post(serve.proxy + "/api/v1/chat/completions",
                                           json=chat("Hi", 4, stream=False))
                return during.status_code

            *ends, during = await asyncio.wait_for(asyncio.gather(
                *(_stream(client, serve.proxy, started, counter) for _ in range(STREAMS)),
                kill()), CLIENT_TIMEOUT_S * 2)
            assert isinstance(during, int)
            return [str(end) for end in ends], during

    ends, during = asyncio.run(load())
    # Each stream ended: none hung, none finished its 1024 tokens as if nothing happened.
    assert len(ends) == STREAMS and "done" not in ends, ends
    # the proxy says each was cut: an error event (or the connection cut), never an end
    # that looks like a whole answer
    assert set(ends) <= {"error_event", "cut"}, ends
    assert during in (200, 502, 503), during

    # Serve lives on, and its health says the engine went away...
    health = poll(serve.health, lambda h: h["controller"]["failsafe_trips"] >= 1,
                  "the fail-safe trip in health")
    assert psutil.pid_exists(child.pid) is False or \
        psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    # ...then a new engine is started, and the proxy is back to observing.
    poll(serve.health, lambda h: h["status"] == "ok" and h["backend"]["model"] is not None
         and h["backend_liveness"]["state"] == "up", "serve healthy again")
    assert serve.engine_child().pid != child.pid
    events = _events(serve)
    assert "backend_exited" in events, events
    answer = httpx.post(serve.proxy + "/api/v1/chat/completions",
                        json=chat("What is the capital of France?", 8, stream=False),
                        timeout=CLIENT_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    poll(serve.engine_stats, idle, "new engine idle")
    assert health["failsafe_reason"] is None or "exited" in health["failsafe_reason"]


def test_sigstop_of_the_engine_under_load(tmp_path: Path) -> None:
    # The one-stream case is tests/controller/test_liveness.py; here several run, and each
    # must survive the freeze: marked unresponsive meanwhile, all completed after SIGCONT.
    env = {"INFEROS_UPSTREAM_LIVENESS_INTERVAL_S": "0.25",
           "INFEROS_UPSTREAM_LIVENESS_TIMEOUT_S": "1.0",
           "INFEROS_UPSTREAM_LIVENESS_FAILURES": "2"}
    with serve_embedded(tmp_path, env) as serve:
        child = serve.engine_child()
        frozen = False

        async def load() -> list[str]:
            nonlocal frozen
            started = asyncio.Event()
            counter = [0]
            async with httpx.AsyncClient(timeout=httpx.Timeout(CLIENT_TIMEOUT_S),
                                         limits=httpx.Limits(max_connections=None)) as client:
                async def freeze() -> str:
                    nonlocal frozen
                    await asyncio.wait_for(started.wait(), CLIENT_TIMEOUT_S)
                    os.kill(child.pid, signal.SIGSTOP)
                    frozen = True
                    await asyncio.to_thread(
                        poll, serve.health,
                        lambda h: h["backend_liveness"]["state"] == "unresponsive",
                        "marked unresponsive")
                    os.kill(child.pid, signal.SIGCONT)
                    frozen = False
                    return "thawed"

                *ends, thawed = await asyncio.wait_for(asyncio.gather(
                    *(_stream(client, serve.proxy, started, counter, max_tokens=64)
                      for _ in range(STREAMS)), freeze()), CLIENT_TIMEOUT_S * 2)
                assert thawed == "thawed"
                return [str(end) for end in ends]

        try:
            ends = asyncio.run(load())
        finally:
            if frozen:
                os.kill(child.pid, signal.SIGCONT)
        assert ends == ["done"] * STREAMS, ends
        poll(serve.health, lambda h: h["backend_liveness"]["state"] == "up", "recovered")
        poll(serve.engine_stats, idle, "engine idle with its KV pool whole")
        assert serve.engine_child().pid == child.pid  # frozen is not dead: no restart
