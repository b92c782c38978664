"""A backend server process that Infer-OS runs itself, and the launchers that build one
from ``BackendSettings``: the embedded engine, or llama.cpp's OpenAI server.

The argv is the whole truth about a managed backend's configuration: tests read it back
(``describe``) to see that a policy change reached the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from inferos.controller.cache_types import CACHE_TYPES, by_name
from inferos.controller.snapshot import BackendSettings
from inferos.errors import InferOSError

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
# llama-cpp-python's own default context when none is given to it.
LLAMACPP_DEFAULT_CTX = 4096


class BackendStartError(InferOSError):
    """The backend exited or stayed unhealthy while starting."""


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class BackendChild:
    argv: list[str]
    port: int
    health_path: str
    env: Mapping[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, timeout_s: float) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno(),
            stderr=sys.stderr.fileno(), env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        try:
            await self._wait_healthy(timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def _wait_healthy(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise BackendStartError(f"{self.argv[2]} exited with code "
                                            f"{self.process.returncode} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if ((await client.get(self.url + self.health_path)).status_code == 200
                            and self.owns_port()):
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), 0.1)
        raise BackendStartError(f"backend at {self.url} not healthy within {timeout_s:.0f} s")

    def cmdline(self) -> list[str]:
        """The process's command line as the OS reports it (the argv we gave, read back)."""
        if self.process is None:
            return []
        try:
            return list(psutil.Process(self.process.pid).cmdline())
        except (psutil.Error, OSError):
            return []

    def owns_port(self) -> bool:
        """True when our process listens on our port. A healthy answer alone is not enough:
        two starts can both find a port free, and then the loser's health check is answered
        by the winner's server while its own process fails to bind."""
        if self.process is None:
            return False
        try:
            listening = psutil.Process(self.process.pid).net_connections(kind="inet")
        except (psutil.Error, OSError):
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                   for c in listening)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


# A launcher builds the process for some settings on a port; ``live`` holds the live
# policy keys a new engine starts with (so a blue/green switch keeps them).
Launcher = Callable[[BackendSettings, Mapping[str, Any], int], BackendChild]


def engine_launcher(model: str) -> Launcher:
    def launch(settings: BackendSettings, live: Mapping[str, Any], port: int) -> BackendChild:
        argv = [sys.executable, "-m", "inferos.cli", "engine", "--host", HOST,
                "--port", str(port), "--model", model,
                "--exit-with-parent", str(os.getpid())]
        if settings.ctx_size is not None:
            argv += ["--ctx-size", str(settings.ctx_size)]
        if settings.threads:
            argv += ["--threads", str(settings.threads)]
        if settings.provider:
            argv += ["--provider", settings.provider]
        if live:
            argv += ["--recent-window", str(live["kv.recent_window"]),
                     "--sink-tokens", str(live["kv.sink_tokens"]),
                     "--level-thresholds", ",".join(str(live[f"kv.level_thresholds.{k}"])
                                                    for k in ("L1_int8", "L2_int4",
                                                              "L3_evict")),
                     "--max-delta-ppl", str(live["quality.max_delta_ppl"]),
                     "--host-pool-bytes", str(live["io.host_pool_bytes"])]
            if live["kv.allow_evict"]:
                argv.append("--kv-allow-evict")
        return BackendChild(argv, port, "/api/v1/health")
    return launch


def llamacpp_launcher(gguf: str, alias: str) -> Launcher:
    def launch(settings: BackendSettings, live: Mapping[str, Any], port: int) -> BackendChild:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", HOST,
                "--port", str(port), "--model_alias", alias,
                "--n_ctx", str(settings.ctx_size or LLAMACPP_DEFAULT_CTX),
                "--type_k", str(by_name(settings.cache_type).ggml_id),
                "--type_v", str(by_name(settings.cache_type).ggml_id),
                # a quantized V cache refuses to start without flash attention
                "--flash_attn", "true" if settings.flash_attn else "false"]
        if settings.threads:
            argv += ["--n_threads", str(settings.threads)]
        return BackendChild(argv, port, "/v1/models")
    return launch


def read_llamacpp_argv(argv: list[str]) -> dict[str, Any]:
    """The settings a llama-cpp-python server process was started with, from its own
    command line (that server has no /props to read them from)."""
    out: dict[str, Any] = {}

    def value(flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    if (n_ctx := value("--n_ctx")) is not None and n_ctx.isdigit():
        out["ctx_size"] = int(n_ctx)
    type_k = value("--type_k")
    if type_k is not None and type_k.isdigit():
        out["cache_type"] = next((c.name for c in CACHE_TYPES if c.ggml_id == int(type_k)),
                                 f"ggml type {type_k}")
    if (threads := value("--n_threads")) is not None and threads.isdigit():
        out["threads"] = int(threads)
    return out
