"""The backend liveness probe: the rule on a fake clock, then a real engine frozen by
SIGSTOP behind a real ``inferos serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from inferos.controller.liveness import (
    GATE_CODE,
    BackendLiveness,
    LivenessSettings,
    ProbeResult,
)
from inferos.proxy.data_plane import DataPlane, GateTimeout
from inferos.tasks import TaskGroup
from tests.backends import free_port
from tests.engine.engine_process import MODEL, engine_process, prepared_model
from tests.serve_child import child_env

UPSTREAM = "http://127.0.0.1:9"
ANSWER = ProbeResult(True, latency_s=0.001, detail="HTTP 200")
SILENCE = ProbeResult(False, detail="no answer within 2.0 s")
REFUSED = ProbeResult(False, refused=True, detail="connection failed")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _liveness(**settings: Any) -> tuple[BackendLiveness, DataPlane, list[tuple[str, dict]],
                                        CollectorRegistry, Clock]:
    plane = DataPlane(UPSTREAM)
    events: list[tuple[str, dict]] = []
    registry = CollectorRegistry()
    clock = Clock()
    liveness = BackendLiveness(plane, LivenessSettings(**settings), registry,
                               lambda kind, **fields: events.append((kind, fields)), clock=clock)
    return liveness, plane, events, registry, clock


def test_silence_in_a_row_marks_unresponsive_and_gates_generations() -> None:
    liveness, plane, events, registry, clock = _liveness(failures=2, wait_s=7.0)
    liveness.observe(ANSWER, UPSTREAM)
    assert liveness.state == "up" and registry.get_sample_value("inferos_backend_up") == 1
    liveness.observe(SILENCE, UPSTREAM)
    assert liveness.state == "up" and not plane.snapshot.gates  # one late answer is no outage
    liveness.observe(SILENCE, UPSTREAM)
    assert liveness.state == "unresponsive"
    assert registry.get_sample_value("inferos_backend_up") == 0
    assert registry.get_sample_value("inferos_backend_state",
                                     {"inferos_backend_state": "unresponsive"}) == 1
    (gate,) = plane.snapshot.gates
    assert gate.code == GATE_CODE and gate.max_wait_s == 7.0 and gate.model is None
    assert [kind for kind, _ in events] == ["backend_unresponsive"]
    clock.now += 12.5
    liveness.observe(ANSWER, UPSTREAM)
    assert liveness.state == "up" and not plane.snapshot.gates
    assert events[-1] == ("backend_recovered",
                          {"upstream": UPSTREAM, "was": "unresponsive", "out_s": 12.5})
    assert registry.get_sample_value("inferos_backend_unresponsive_total") == 1


def test_a_refused_connection_is_unreachable_and_not_gated() -> None:
    liveness, plane, events, _, _ = _liveness(failures=1)
    liveness.observe(REFUSED, UPSTREAM)
    assert liveness.state == "unreachable" and not plane.snapshot.gates
    assert [kind for kind, _ in events] == ["backend_unreachable"]
    liveness.observe(SILENCE, UPSTREAM)  # frozen after a restart: gated now
    assert liveness.state == "unresponsive" and plane.snapshot.gates
    liveness.observe(REFUSED, UPSTREAM)  # gone: requests fail fast again
    assert liveness.state == "unreachable" and not plane.snapshot.gates


async def test_a_generation_waits_bounded_then_times_out_with_the_code() -> None:
    liveness, plane, _, _, _ = _liveness(failures=1, wait_s=0.2)
    plane.bind(asyncio.get_running_loop())
    liveness.observe(SILENCE, UPSTREAM)
    with pytest.raises(GateTimeout) as caught:
        await plane.admit("chat/completions", None, generation=True)
    assert caught.value.gate.code == GATE_CODE
    await plane.admit("models", None, generation=False)  # other routes are never held


async def test_the_probe_stops_cleanly_and_leaves_no_gate() -> None:
    liveness, plane, _, _, _ = _liveness(interval_s=0.01, timeout_s=0.2, failures=1)
    liveness.observe(SILENCE, UPSTREAM)
    assert plane.snapshot.gates
    tasks = TaskGroup()
    tasks.start(liveness.run(), name="liveness")
    await asyncio.sleep(0.1)
    await tasks.stop()
    assert liveness.probes >= 1  # it probed (nothing listens on port 9)
    assert not plane.snapshot.gates
    off = _liveness(interval_s=None)[0]
    await asyncio.wait_for(off.run(), 5)  # disabled: returns at once, probing nothing
    assert off.probes == 0


# -- a real engine, frozen ---------------------------------------------------------------
DEADLINE_S = 60.0


def _poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if done(last):
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: last seen {last!r}")


def _chat(stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Count to fifty."}],
            "max_tokens": max_tokens, "stream": stream}


@pytest.mark.model
@pytest.mark.slow
def test_a_frozen_engine_is_reported_and_new_generations_get_503(tmp_path: Path) -> None:
    prepared_model()
    port, admin_port = free_port(), free_port()
    proxy, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    env = child_env({"INFEROS_UPSTREAM_LIVENESS_INTERVAL_S": "0.25",
                     "INFEROS_UPSTREAM_LIVENESS_TIMEOUT_S": "1.0",
                     "INFEROS_UPSTREAM_LIVENESS_FAILURES": "2",
                     "INFEROS_UPSTREAM_LIVENESS_WAIT_S": "1.5",
                     "INFEROS_INFER_OS_TELEMETRY_DIR": str(tmp_path / "logs")})
    with engine_process(tmp_path, "--ctx-size", "1024") as engine, \
            open(tmp_path / "serve.log", "wb") as serve_log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "inferos.cli", "serve", "--upstream", engine.url,
             "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin_port}"],
            stdout=serve_log, stderr=subprocess.STDOUT, env=env)
        frozen = False
        try:
            def health() -> dict[str, Any]:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                return httpx.get(admin + "/v1/health", timeout=5).json()

            _poll(health, lambda h: h["backend_liveness"]["state"] == "up"
                  and h["status"] == "ok", "probed up")
            client = httpx.Client(timeout=60)
            assert client.post(proxy + "/api/v1/chat/completions",
                               json=_chat()).status_code == 200
            with client.stream("POST", proxy + "/api/v1/chat/completions",
                               json=_chat(stream=True, max_tokens=48)) as streaming:
                assert streaming.status_code == 200
                lines = streaming.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                os.kill(engine.process.pid, signal.SIGSTOP)
                frozen = True

                # Degraded, not passthrough: a frozen backend does not trip the fail-safe.
                _poll(health, lambda h: h["backend_liveness"]["state"] == "unresponsive"
                      and h["status"] == "degraded", "marked unresponsive")
                metrics = httpx.get(admin + "/metrics", timeout=5).text
                assert "inferos_backend_up 0.0" in metrics
                refused = httpx.post(proxy + "/api/v1/chat/completions", json=_chat(),
                                     timeout=60)
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "backend_unresponsive"
                assert int(refused.headers["Retry-After"]) >= 1

                os.kill(engine.process.pid, signal.SIGCONT)
                frozen = False
                _poll(health, lambda h: h["backend_liveness"]["state"] == "up", "recovered")
                # The stream that was running when the engine froze ends as it should.
                rest = [line for line in lines if line]
                assert rest and rest[-1] == "data: [DONE]", rest[-3:]
            assert client.post(proxy + "/api/v1/chat/completions",
                               json=_chat()).status_code == 200
            assert "inferos_backend_up 1.0" in httpx.get(admin + "/metrics", timeout=5).text
            events = [json.loads(line)["event"] for f in (tmp_path / "logs").glob("events_*")
                      for line in f.read_text().splitlines()]
            assert "backend_unresponsive" in events and "backend_recovered" in events
            # A frozen backend and a busy machine are not a hung controller.
            assert health()["controller"]["failsafe_trips"] == 0, \
                (tmp_path / "serve.log").read_text()[-3000:]
            client.close()
        finally:
            if frozen:
                os.kill(engine.process.pid, signal.SIGCONT)
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
