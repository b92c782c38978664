"""``inferos serve`` as a benchmark runs it: the proxy and controller in front of the
embedded engine, a child of the benchmark, its live policy changed through the agent API
as a user changes it.

    with running_serve(log_dir, threads=2) as serve:     # up when entered, stopped on exit
        httpx.post(serve.side.url + "/api/v1/completions", json=...)   # through the proxy
        await set_policy(client, serve, {"scheduler": {"max_batch": 1}})

The context (``backend.ctx_size``) and threads (``backend.threads``) are pinned through
their environment names, so the controller never restarts the engine in the middle of a
measurement to grow its context; the controller's telemetry goes to ``log_dir``, not the
working copy's ``logs/``; ``INFEROS_*`` settings of the caller's environment are dropped
(an ``INFEROS_UPSTREAM`` would point the proxy elsewhere), except where the model
cache is (tests/serve_child.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sse_client import BenchError, Side  # noqa: E402
from tests.backends import free_port  # noqa: E402
from tests.serve_child import child_env, started_serve  # noqa: E402

__all__ = ["MODEL", "Serve", "running_serve", "scheduler_stats", "set_policy", "wait_idle"]

MODEL = "smollm2-135m-instruct"
HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0  # preparing the model on first use takes minutes
APPLY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Serve:
    side: Side  # the proxy, with Lemonade's paths
    admin: str  # the agent API


@contextlib.contextmanager
def running_serve(log_dir: Path, *, threads: int, ctx_size: int = 4096,
                  env: dict[str, str] | None = None) -> Iterator[Serve]:
    """``inferos serve --backend engine`` on free ports, healthy through the proxy when
    entered; on exit SIGTERM, which stops its engine too. Its output is in
    ``log_dir/inferos_serve.log``. ``env``: settings of its own (INFEROS_ADMIN_TOKEN...)."""
    port, admin = free_port(), free_port()
    env = child_env({"INFEROS_INFER_OS_BACKEND_CTX_SIZE": str(ctx_size),
                     "INFEROS_INFER_OS_BACKEND_THREADS": str(threads),
                     "INFEROS_INFER_OS_TELEMETRY_DIR": str(log_dir / "telemetry"),
                     **(env or {})})
    url = f"http://{HOST}:{port}"
    # /api/v1/health goes through the proxy to the engine: 200 once the model is in
    with started_serve(["--backend", "engine", "--model", MODEL, "--listen", f"{HOST}:{port}",
                        "--admin", f"{HOST}:{admin}"], env, log_dir / "inferos_serve.log",
                       up_url=url + "/api/v1/health", deadline_s=START_TIMEOUT_S):
        yield Serve(Side("inferos", url, MODEL, "/api/v1"), f"http://{HOST}:{admin}")


def _flatten(patch: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


async def set_policy(client: httpx.AsyncClient, serve: Serve, patch: dict[str, Any]) -> None:
    """POST /v1/policy on the agent; returns once every key of ``patch`` is reported
    applied with the value asked (BenchError otherwise: a figure measured under another
    policy than the one printed would be a lie)."""
    answer = await client.post(serve.admin + "/v1/policy", json=patch)
    if answer.status_code != 200:
        raise BenchError(f"POST /v1/policy {patch}: {answer.status_code} {answer.text}")
    keys = answer.json()["keys"]
    wanted = _flatten(patch)
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not all(keys[k]["status"] == "applied" and keys[k]["in_effect"] == v
                  for k, v in wanted.items()):
        if time.monotonic() > deadline:
            raise BenchError(f"policy {wanted} not applied: {[keys[k] for k in wanted]}")
        await asyncio.sleep(0.1)
        keys = (await client.get(serve.admin + "/v1/health")).json()["policy_status"]


async def scheduler_stats(client: httpx.AsyncClient, side: Side) -> dict[str, Any]:
    """The engine's ``scheduler`` block of GET /api/v1/stats."""
    block: dict[str, Any] = (await client.get(side.url + "/api/v1/stats")).json()["scheduler"]
    return block


async def wait_idle(client: httpx.AsyncClient, side: Side, timeout_s: float = 120.0) -> None:
    """Until the engine holds no sequence: a client that went away is released at the
    scheduler's next step, a finished one parks its KV after its last token."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await scheduler_stats(client, side)
        if not (stats["decoding"] or stats["prefilling"] or stats["queue_depth"]):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the engine is still busy after {timeout_s:.0f} s: {stats}")
        await asyncio.sleep(0.02)
