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
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psutil

from inferos.controller.snapshot import BackendSettings
from inferos.errors import InferOSError

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
# llama-cpp-python's --type_k/--type_v take ggml type numbers.
GGML_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


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
            stderr=sys.stderr.fileno(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
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


Launcher = Callable[[BackendSettings, int], BackendChild]
ENGINE_FIELDS = ("ctx_size", "threads", "host_pool_bytes", "kv_allow_evict")
LLAMACPP_FIELDS = ("ctx_size", "cache_type_k", "cache_type_v", "flash_attn", "threads")


def engine_launcher(model: str) -> Launcher:
    def launch(settings: BackendSettings, port: int) -> BackendChild:
        argv = [sys.executable, "-m", "inferos.cli", "engine", "--host", HOST,
                "--port", str(port), "--model", model,
                "--exit-with-parent", str(os.getpid())]
        if settings.ctx_size is not None:
            argv += ["--ctx-size", str(settings.ctx_size)]
        if settings.threads:
            argv += ["--threads", str(settings.threads)]
        if settings.host_pool_bytes is not None:
            argv += ["--host-pool-bytes", str(settings.host_pool_bytes)]
        if settings.kv_allow_evict:
            argv.append("--kv-allow-evict")
        return BackendChild(argv, port, "/api/v1/health")
    return launch


def llamacpp_launcher(gguf: str, alias: str) -> Launcher:
    def launch(settings: BackendSettings, port: int) -> BackendChild:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", HOST,
                "--port", str(port), "--model_alias", alias,
                "--n_ctx", str(settings.ctx_size or 4096),
                "--type_k", str(GGML_TYPES[settings.cache_type_k]),
                "--type_v", str(GGML_TYPES[settings.cache_type_v]),
                # a quantized V cache refuses to start without flash attention
                "--flash_attn", "true" if settings.flash_attn else "false"]
        if settings.threads:
            argv += ["--n_threads", str(settings.threads)]
        return BackendChild(argv, port, "/v1/models")
    return launch
