"""``inferos serve`` as a child of a test or a benchmark: the one way they start it.

``child_env`` is the caller's environment without its ``INFEROS_*`` settings (an
``INFEROS_UPSTREAM`` would point the proxy elsewhere, a pinned setting would change what is
measured), except where the model cache is; ``started_serve`` starts ``inferos serve``
with it, waits until ``up_url`` answers 200, and stops it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.backends import wait_until_up

__all__ = ["KEPT", "child_env", "started_inferos", "started_serve", "stop_serve"]

# Where the model cache is: a serve without them would prepare the model again.
KEPT = ("INFEROS_CACHE", "INFEROS_MODELS_DIR")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFEROS_") or k in KEPT}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def stop_serve(process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM, which stops a managed engine too; SIGKILL past ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@contextlib.contextmanager
def started_serve(args: list[str], env: Mapping[str, str], log_path: Path, *, up_url: str,
                  deadline_s: float = 300) -> Iterator[subprocess.Popen[bytes]]:
    """``inferos serve ARGS``, its output in ``log_path``; up once ``up_url`` answers 200
    (the first start may prepare the model: minutes)."""
    with started_inferos("serve", args, env, log_path, up_url=up_url,
                         deadline_s=deadline_s) as process:
        yield process


@contextlib.contextmanager
def started_inferos(command: str, args: list[str], env: Mapping[str, str], log_path: Path, *,
                    up_url: str, deadline_s: float = 300) -> Iterator[subprocess.Popen[bytes]]:
    """``inferos COMMAND ARGS`` (``serve``, ``engine``), as ``started_serve``."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "inferos.cli", command, *args],
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(env))
    try:
        wait_until_up(up_url, process, log_path, deadline_s=deadline_s)
        yield process
    finally:
        stop_serve(process)
