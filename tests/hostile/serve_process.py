"""``inferos serve`` as the hostile tests run it: a real process on the real embedded engine
(``--backend engine``), loopback ports, its telemetry and log in the test's folder."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.backends import free_port
from tests.engine.engine_process import MODEL, prepared_model
from tests.serve_child import child_env, started_serve

DEADLINE_S = 120.0  # generous: two cores shared with whatever else runs


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    proxy: str  # http://127.0.0.1:port (the OpenAI routes are under /api/v1)
    admin: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        assert self.process.poll() is None, f"serve exited:\n{self.log()[-3000:]}"
        answer: dict[str, Any] = httpx.get(self.admin + "/v1/health", timeout=10).json()
        return answer

    def engine_stats(self) -> dict[str, Any]:
        """The engine's own ``GET stats``, through the proxy (serve gives its child an API
        key, so the proxy is the one way in)."""
        assert self.process.poll() is None, f"serve exited:\n{self.log()[-3000:]}"
        response = httpx.get(self.proxy + "/api/v1/stats", timeout=10)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def engine_child(self) -> psutil.Process:
        children = [child for child in psutil.Process(self.process.pid).children()
                    if "engine" in child.cmdline()]
        assert len(children) == 1, children
        return children[0]


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str,
         deadline_s: float = DEADLINE_S) -> Any:
    """``fetch()`` until ``done`` holds; an assertion naming ``what`` and the last value."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if done(last):
                return last
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {deadline_s} s: last seen {last!r}")


def chat(content: str = "Hi", max_tokens: int = 4, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "stream": stream, "temperature": 0}


def idle(stats: Mapping[str, Any]) -> bool:
    """The engine generates nothing, queues nothing, and has every KV buffer back."""
    scheduler = stats["scheduler"]
    return (scheduler["decoding"] == 0 and scheduler["prefilling"] == 0
            and scheduler["queue_depth"] == 0 and stats["kv_pool"]["in_use"] == 0)


@contextlib.contextmanager
def serve_embedded(tmp_path: Path, env: Mapping[str, str] | None = None) -> Iterator[Serve]:
    prepared_model()
    port, admin_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    full_env = child_env({"INFEROS_INFER_OS_TELEMETRY_DIR": str(tmp_path / "logs"),
                          **(env or {})})
    proxy = f"http://127.0.0.1:{port}"
    with started_serve(["--backend", "engine", "--listen", f"127.0.0.1:{port}",
                        "--admin", f"127.0.0.1:{admin_port}"], full_env, log_path,
                       up_url=proxy + "/api/v1/health") as process:
        running = Serve(process, proxy, f"http://127.0.0.1:{admin_port}", log_path)
        poll(running.health, lambda h: h["status"] == "ok", "serve healthy")
        yield running
        # Hostile load is a busy machine, not a hung controller: the default staleness
        # bound (75 ms) must hold through it. A killed backend trips for its own reason.
        stale = [line for line in running.log().splitlines() if "controller stale" in line]
        assert not stale, stale[:3]
