"""The embedded engine as a child process of ``inferos serve``.

``EngineChild`` starts ``python -m inferos.cli engine`` on 127.0.0.1 (port 8022, or a free
one when that is taken), waits until its ``health`` answers, and stops it (SIGTERM, then
SIGKILL after a grace period). The child is told our pid and exits by itself if we vanish
without stopping it (SIGKILL, a crash), so it is never left orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from types import TracebackType

import httpx

from inferos.errors import InferOSError

ENGINE_HOST = "127.0.0.1"
ENGINE_PORT = 8022
HEALTH_PATH = "/api/v1/health"
# Loading the model takes seconds; a cold ONNX Runtime session on a busy machine, longer.
START_TIMEOUT_S = 300.0
STOP_GRACE_S = 15.0


class EngineStartError(InferOSError):
    """The engine child exited or stayed unhealthy while starting."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = ENGINE_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EngineChild:
    """``async with EngineChild(model=...) as child``: ``child.url`` is the engine's origin."""

    def __init__(self, model: str, *, port: int | None = None, ctx_size: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.model = model
        self.port = port if port is not None else (
            ENGINE_PORT if port_is_free(ENGINE_HOST, ENGINE_PORT) else free_port())
        self.ctx_size = ctx_size
        self.extra_args = extra_args
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "inferos.cli", "engine", "--host", ENGINE_HOST,
                "--port", str(self.port), "--model", self.model,
                "--exit-with-parent", str(os.getpid())]
        if self.ctx_size is not None:
            args += ["--ctx-size", str(self.ctx_size)]
        return args + list(self.extra_args)

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        # The child's logs go to our stderr: the user sees the model load and any error.
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=sys.stderr.fileno(),
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
                    raise EngineStartError(
                        f"the embedded engine exited with code {self.process.returncode} "
                        "while starting (its messages are above)")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(self.url + HEALTH_PATH)
                    if response.status_code == 200:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), 0.25)
        raise EngineStartError(f"the embedded engine did not answer at {self.url} "
                               f"within {timeout_s:.0f} s")

    async def stop(self) -> None:
        """Stops the child and waits for it; safe to call twice."""
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

    async def __aenter__(self) -> EngineChild:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


def _progress(message: str) -> None:
    print(f"inferos: {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def embedded_engine(model: str | None = None) -> AsyncIterator[EngineChild]:
    """``inferos serve``'s embedded default: prepares ``model`` if needed (progress on
    stderr), runs the engine child on it until the block ends."""
    from inferos.engine.prepare import ensure_prepared
    from inferos.engine.prepared_models import DEFAULT_MODEL

    name = model or DEFAULT_MODEL
    await asyncio.to_thread(ensure_prepared, name, progress=_progress)
    async with EngineChild(model=name) as child:
        _progress(f"embedded engine on {child.url} (pid {child.pid})")
        yield child
