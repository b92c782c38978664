"""The sides of the A/B run (bench/ab.py), as the client addresses them, and the
processes whose memory counts against each.

On the embedded engine (the default) every side is a fresh child of the run, started for
one repeat and stopped after it, so that no cache carries over from one side or repeat to
the next and every side gets the very same prompts:

  off         ``inferos engine --no-prefix-cache --max-batch 1 --no-speculation``: the
              plain engine, one request at a time, nothing reused, exact KV; the client
              talks to it directly
  PROFILE     ``inferos serve --backend engine`` with ``infer_os.profile`` = PROFILE
              (safe, balanced, aggressive); the client talks to its proxy

Both load the same prepared weights, at the same context and threads. With
``--upstream URL`` (a backend the user runs, such as Lemonade) ``off`` is that backend
addressed directly and each profile an ``inferos serve --upstream URL`` in front of it;
the backend is not restarted between sides, so its own caches may carry over, and its
process is found by the port it listens on (its memory is null where it cannot be).

``MemoryWatch`` samples the resident memory of every process of a side (a process and its
children) every 100 ms and keeps the peak, in total and per process.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sse_client import BenchError, Side  # noqa: E402
from tests.backends import free_port  # noqa: E402
from tests.serve_child import child_env, started_inferos  # noqa: E402

__all__ = ["OFF", "PROFILES", "MemoryWatch", "Running", "Target", "started_side"]

OFF = "off"
PROFILES = ("safe", "balanced", "aggressive")
HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0  # the first start may prepare the model
SAMPLE_S = 0.1


@dataclass(frozen=True)
class Target:
    """What the run measures against: the embedded engine, or the user's backend."""

    model: str
    threads: int
    ctx_size: int
    upstream: str | None = None  # None: the embedded engine
    upstream_prefix: str = "/api/v1"


@dataclass(frozen=True)
class Running:
    name: str                    # "off" or a profile
    side: Side                   # where the client sends requests
    pids: tuple[int, ...]        # the processes (and their children) whose memory counts
    stats_url: str | None        # the engine's GET /api/v1/stats, where there is one
    admin: str | None            # the agent API (ON sides)
    serve_pid: int | None        # the ``inferos serve`` a fault is injected into

    def inject_fault(self) -> None:
        """SIGUSR1 to ``inferos serve`` started with INFEROS_FAULT_SIGNAL=1: its controller
        raises in its next mid-loop tick (controller.Controller.inject_fault)."""
        if self.serve_pid is None:
            raise BenchError(f"{self.name}: no inferos serve to inject a fault into")
        psutil.Process(self.serve_pid).send_signal(signal.SIGUSR1)


def _listener_pid(url: str) -> int | None:
    """The process listening on ``url``'s port, where this user may see it."""
    port = httpx.URL(url).port
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def _serve_env(target: Target, profile: str, log_dir: Path) -> dict[str, str]:
    extra = {"INFEROS_INFER_OS_PROFILE": profile,
             "INFEROS_INFER_OS_TELEMETRY_DIR": str(log_dir / f"telemetry-{profile}"),
             "INFEROS_FAULT_SIGNAL": "1"}
    if target.upstream is None:
        # Pinned, so that the controller never restarts the engine mid-measurement to grow
        # its context or change its threads.
        extra.update(INFEROS_INFER_OS_BACKEND_CTX_SIZE=str(target.ctx_size),
                     INFEROS_INFER_OS_BACKEND_THREADS=str(target.threads))
    return child_env(extra)


@contextlib.contextmanager
def started_side(name: str, target: Target, log_dir: Path) -> Iterator[Running]:
    """The side ``name`` up and healthy; stopped on exit (not the user's backend)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    if name == OFF and target.upstream is not None:
        pid = _listener_pid(target.upstream)
        yield Running(name, Side(name, target.upstream, target.model, target.upstream_prefix),
                      (pid,) if pid else (), None, None, None)
        return
    port = free_port()
    url = f"http://{HOST}:{port}"
    if name == OFF:
        args = ["--host", HOST, "--port", str(port), "--model", target.model,
                "--ctx-size", str(target.ctx_size), "--threads", str(target.threads),
                "--no-prefix-cache", "--max-batch", "1", "--no-speculation"]
        with started_inferos("engine", args, child_env(), log, up_url=url + "/api/v1/health",
                             deadline_s=START_TIMEOUT_S) as process:
            yield Running(name, Side(name, url, target.model, "/api/v1"), (process.pid,),
                          url + "/api/v1/stats", None, None)
        return
    if name not in PROFILES:
        raise ValueError(f"unknown side {name!r}")
    admin = free_port()
    args = ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}"]
    if target.upstream is None:
        args += ["--backend", "engine", "--model", target.model]
    else:
        args += ["--upstream", target.upstream]
    with started_inferos("serve", args, _serve_env(target, name, log_dir), log,
                         up_url=url + "/api/v1/health", deadline_s=START_TIMEOUT_S) as process:
        pids = [process.pid]
        if target.upstream is not None and (backend := _listener_pid(target.upstream)):
            pids.append(backend)
        # The user's backend behind ON has no stats route of ours; the engine has.
        stats = url + "/api/v1/stats" if target.upstream is None else None
        yield Running(name, Side(name, url, target.model, "/api/v1"), tuple(pids), stats,
                      f"http://{HOST}:{admin}", process.pid)


def _label(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        line = process.cmdline()
        if "inferos.cli" in line:
            at = line.index("inferos.cli")
            return f"inferos {line[at + 1]}" if at + 1 < len(line) else "inferos"
        return process.name()
    return f"pid {process.pid}"


class MemoryWatch:
    """The peak resident memory of ``pids`` and their children, sampled every 100 ms on a
    thread of its own from ``start`` to ``stop``; ``peak()`` is {total, per process}."""

    def __init__(self, pids: tuple[int, ...]) -> None:
        self.pids = pids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._total = 0
        self._each: dict[str, int] = {}

    def _sample(self) -> None:
        total = 0
        each: dict[str, int] = {}
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss = process.memory_info().rss
                        total += rss
                        label = _label(process)
                        each[label] = each.get(label, 0) + rss
        with self._lock:
            self._total = max(self._total, total)
            for label, rss in each.items():
                self._each[label] = max(self._each.get(label, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def start(self) -> MemoryWatch:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="ab-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def reset(self) -> None:
        with self._lock:
            self._total, self._each = 0, {}
        self._sample()

    def peak(self) -> dict[str, Any]:
        """{"rss_bytes": the peak total or None (nothing measurable), "processes": {...}}"""
        with self._lock:
            if not self.pids:
                return {"rss_bytes": None, "processes": {}}
            return {"rss_bytes": self._total, "processes": dict(self._each)}

