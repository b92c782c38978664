"""A backend server process that Infer-OS runs itself, and the launchers that build one
from ``BackendSettings``: the embedded engine, or a llama.cpp OpenAI server — llama.cpp's
own ``llama-server`` where ``scripts/build-llama-server.sh`` built it (what Lemonade's
llamacpp recipe runs), else llama-cpp-python's server.

The argv is the whole truth about a managed backend's configuration: tests read it back
(``describe``), and ``read_llamacpp_argv`` reads either server's command line.
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
from importlib import metadata
from typing import Any

import httpx
import psutil

from inferos.controller.cache_types import CACHE_TYPES, by_name
from inferos.controller.llama_server import LlamaServerBinary, find_llama_server
from inferos.controller.snapshot import BackendSettings
from inferos.errors import InferOSError

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
# llama-cpp-python's own default context when none is given to it (llama-server's too).
LLAMACPP_DEFAULT_CTX = 4096
# llama-server's slots: continuous batching over this many requests at once, where
# llama-cpp-python's server runs one (RUNTIME_FACTS: 103 tok/s at 1 stream, 242 at 8).
LLAMA_SERVER_SLOTS = 8


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
    server: str = ""  # which server runs, for people: "llama-cpp-python 0.3.36"
    process: asyncio.subprocess.Process | None = None
    # The key the process requires (the engine's, given in ``env``); None: it has none.
    api_key: str | None = field(default=None, repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a request to this process carries to be answered."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

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
        async with httpx.AsyncClient(timeout=2.0, headers=self.auth_headers) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise BackendStartError(f"{self.server or self.argv[0]} exited with code "
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
        return BackendChild(argv, port, "/api/v1/health", server="inferos engine")
    return launch


def llamacpp_launcher(gguf: str, alias: str, *, slots: int = LLAMA_SERVER_SLOTS) -> Launcher:
    """llama.cpp's own server where it is built, else llama-cpp-python's (one slot)."""
    binary = find_llama_server()
    if binary is None:
        return llama_cpp_python_launcher(gguf, alias)
    return llama_server_launcher(binary, gguf, alias, slots=slots)


def llama_server_launcher(binary: LlamaServerBinary, gguf: str, alias: str, *,
                          slots: int = LLAMA_SERVER_SLOTS) -> Launcher:
    def launch(settings: BackendSettings, live: Mapping[str, Any], port: int) -> BackendChild:
        cache_type = by_name(settings.cache_type).name
        argv = [str(binary.path), "-m", gguf, "--host", HOST, "--port", str(port),
                "--alias", alias, "-c", str(settings.ctx_size or LLAMACPP_DEFAULT_CTX),
                # One KV pool shared by the slots, so one request may use all of -c as on
                # llama-cpp-python; without it each slot gets -c / -np. (llama-server does
                # the same itself when it picks the slot count.)
                "-np", str(slots), "--kv-unified",
                "--cache-type-k", cache_type, "--cache-type-v", cache_type,
                "-fa", "on" if settings.flash_attn else "off"]
        if settings.threads:
            argv += ["-t", str(settings.threads)]
        return BackendChild(argv, port, "/health", server=binary.describe())
    return launch


def llama_cpp_python_launcher(gguf: str, alias: str) -> Launcher:
    server = f"llama-cpp-python {_installed('llama-cpp-python')}"

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
        return BackendChild(argv, port, "/v1/models", server=server)
    return launch


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


# Each setting's flags on both command lines: llama-cpp-python's server's first, then
# llama-server's (long and short).
_CTX_FLAGS = ("--n_ctx", "--ctx-size", "-c")
_THREADS_FLAGS = ("--n_threads", "--threads", "-t")
_ALIAS_FLAGS = ("--model_alias", "--alias", "-a")
# K then V: llama-cpp-python's take a ggml type id, llama-server's a type name.
_TYPE_FLAGS = ((("--type_k",), ("--cache-type-k", "-ctk")),
               (("--type_v",), ("--cache-type-v", "-ctv")))
_FLASH_FLAGS = ("--flash_attn", "--flash-attn", "-fa")


def _value(argv: list[str], flags: tuple[str, ...]) -> str | None:
    for flag in flags:
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return None


def _cache_type(argv: list[str], id_flags: tuple[str, ...],
                name_flags: tuple[str, ...]) -> str | None:
    ggml_id = _value(argv, id_flags)
    if ggml_id is not None and ggml_id.isdigit():
        return next((c.name for c in CACHE_TYPES if c.ggml_id == int(ggml_id)),
                    f"ggml type {ggml_id}")
    return _value(argv, name_flags)


def llamacpp_alias(argv: list[str]) -> str | None:
    """The model name a llama.cpp server process answers to, from its command line."""
    return _value(argv, _ALIAS_FLAGS)


def read_llamacpp_argv(argv: list[str]) -> dict[str, Any]:
    """The settings a llama.cpp server process was started with, from its own command
    line: llama-cpp-python's server (which has no /props to read them from) or
    llama-server (read the same way, so both are verified alike)."""
    out: dict[str, Any] = {}
    if (n_ctx := _value(argv, _CTX_FLAGS)) is not None and n_ctx.isdigit():
        out["ctx_size"] = int(n_ctx)
    k, v = (_cache_type(argv, *flags) for flags in _TYPE_FLAGS)
    if k is not None:
        # One name for both, as BackendSettings has; K and V apart match no table type.
        out["cache_type"] = k if v in (None, k) else f"K {k}, V {v}"
    flash = _value(argv, _FLASH_FLAGS)
    if flash in ("true", "on"):
        out["flash_attn"] = True
    elif flash in ("false", "off"):
        out["flash_attn"] = False
    if (threads := _value(argv, _THREADS_FLAGS)) is not None and threads.isdigit():
        out["threads"] = int(threads)
    return out
