"""The batching engine through HTTP: a full queue answers 503 with Retry-After, the batch
and queue bounds change live, and a storm of clients leaving mid-stream leaks no row."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, engine_process, kv_buffers_in_use
from tests.engine.test_live_policy import POLICY, body, next_version, post, stats

pytestmark = pytest.mark.model

LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0}
URL = "/api/v1/completions"


@pytest.fixture(scope="module")
def engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("batching"), "--ctx-size", "1024") as server:
        yield server


def _wait_for(predicate: Any, deadline_s: float = 120.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _scheduler(engine: RunningServer) -> dict[str, Any]:
    return dict(stats(engine)["scheduler"])


def test_a_full_queue_answers_503_with_retry_after(engine: RunningServer) -> None:
    ack = post(engine, body(next_version(engine), scheduler__max_batch=1,
                            scheduler__max_queue=0))
    assert ack["applied"]["scheduler.max_batch"] == 1
    assert ack["applied"]["scheduler.max_queue"] == 0
    stop = threading.Event()

    def hold() -> None:
        with httpx.Client(timeout=300) as client, client.stream(
                "POST", engine.url + URL, json={**LONG, "stream": True}) as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    return

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        _wait_for(lambda: kv_buffers_in_use(stats(engine)) == 1)
        before = stats(engine)["rejected_requests"]
        refused = httpx.post(engine.url + URL, json={**LONG, "max_tokens": 4}, timeout=60)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "queue_full" and error["type"] == "server_error"
        assert stats(engine)["rejected_requests"] == before + 1
    finally:
        stop.set()
        holder.join(timeout=120)
    _wait_for(lambda: kv_buffers_in_use(stats(engine)) == 0)
    post(engine, body(next_version(engine)))  # the defaults again
    answer = httpx.post(engine.url + URL, json={**LONG, "max_tokens": 4}, timeout=120)
    assert answer.status_code == 200


def test_batch_bounds_and_speculation_change_live(engine: RunningServer) -> None:
    ack = post(engine, body(next_version(engine), scheduler__max_batch=3,
                            scheduler__tpot_budget_ms=50.0, speculation__enabled=False,
                            speculation__max_draft=4))
    for key, value in {"scheduler.max_batch": 3, "scheduler.tpot_budget_ms": 50.0,
                       "speculation.enabled": False, "speculation.max_draft": 4}.items():
        assert ack["applied"][key] == value
    scheduler = _scheduler(engine)
    assert scheduler["max_batch"] == 3 and scheduler["tpot_budget_ms"] == 50.0
    assert scheduler["speculation"]["enabled"] is False
    placement = scheduler["placement"]
    assert placement["prefill_provider"] == placement["decode_provider"]
    assert placement["fell_back"] is False  # cpu_only asked, cpu_only runs

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[client.post(engine.url + URL, json={
                **LONG, "prompt": f"{n}, {n + 1}, {n + 2},", "max_tokens": 24})
                for n in range(5)])

    before = _scheduler(engine)
    answers = asyncio.run(together())
    assert all(a.status_code == 200 for a in answers)
    after = _scheduler(engine)
    # five requests, at most three rows: some waited, and steps batched rows
    assert after["batched_steps"] > before["batched_steps"]
    assert after["admitted"] == 0 and after["queue_depth"] == 0
    waited = [a.json()["timings"]["queue_ms"] for a in answers]
    assert sum(1 for w in waited if w > 0) >= 2
    assert after["speculation"]["verify_runs"] == before["speculation"]["verify_runs"]
    post(engine, body(next_version(engine)))


def test_a_storm_of_clients_leaving_mid_stream_leaks_no_row(engine: RunningServer) -> None:
    async def storm() -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            async def leave_after(lines: int, n: int) -> None:
                request = {**LONG, "prompt": f"{n}, {n + 1},", "stream": True}
                async with client.stream("POST", engine.url + URL, json=request) as response:
                    seen = 0
                    async for _ in response.aiter_lines():
                        seen += 1
                        if seen >= lines:
                            return

            async def complete(n: int) -> int:
                response = await client.post(engine.url + URL, json={
                    **LONG, "prompt": f"{n}, {n + 1},", "max_tokens": 8})
                return int(response.json()["usage"]["completion_tokens"])

            results = await asyncio.gather(
                *[leave_after(2 + 3 * n, n) for n in range(8)],
                *[complete(n) for n in range(4)])
            assert results[8:] == [8, 8, 8, 8]

    before = stats(engine)
    asyncio.run(storm())
    _wait_for(lambda: kv_buffers_in_use(stats(engine)) == 0 and
              _scheduler(engine)["admitted"] == 0)
    after = stats(engine)
    assert after["cancelled_requests"] >= before["cancelled_requests"] + 8
    assert after["kv_pool"]["in_use"] == 0
    assert httpx.get(engine.url + POLICY, timeout=60).status_code == 200
