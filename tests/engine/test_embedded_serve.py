"""``inferos serve`` with no backend: it starts the embedded engine, proxies to it, and
never leaves it behind (SIGTERM stops it; if serve is killed outright, it stops itself)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from inferos.proxy.discovery import find_lemonade
from tests.backends import free_port
from tests.engine.engine_process import MODEL
from tests.serve_child import child_env, started_serve

pytestmark = [pytest.mark.model, pytest.mark.slow]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not _gone(pid):
        assert time.monotonic() < deadline, f"engine child {pid} still running"
        time.sleep(0.1)


@pytest.fixture
def serve(smollm2_folder: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                     str, Path]]:
    if find_lemonade() is not None:
        pytest.skip("a Lemonade server answers on its default port; no embedded default")
    proxy = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "serve.log"
    url = f"http://{proxy}"
    with started_serve(["--listen", proxy, "--admin", f"127.0.0.1:{free_port()}"],
                       child_env(), log_path, up_url=url + "/api/v1/health") as process:
        yield process, url, log_path


def _engine_child(process: subprocess.Popen[bytes]) -> psutil.Process:
    children = psutil.Process(process.pid).children()
    assert len(children) == 1, children
    assert "engine" in children[0].cmdline()
    return children[0]


def test_serve_embedded_answers_through_the_proxy_and_stops_child_on_sigterm(
        serve: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, url, log_path = serve
    child = _engine_child(process)
    client = openai.OpenAI(base_url=url + "/api/v1", api_key="lemonade", max_retries=0)
    health = client.get("/health", cast_to=object)
    assert health["all_models_loaded"][0]["pid"] == child.pid  # type: ignore[index]
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in (answer.choices[0].message.content or "")
    assert "embedded engine" in log_path.read_text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    _wait_gone(child.pid)


def test_engine_child_stops_itself_when_serve_is_killed(
        serve: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, _, _ = serve
    child = _engine_child(process)
    process.kill()
    process.wait(timeout=30)
    _wait_gone(child.pid)
