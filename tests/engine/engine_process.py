"""The engine server as the tests run it: ``python -m inferos.cli engine`` on a free port.

A subprocess, as ``inferos serve`` runs it, so a test sees what a client sees (sockets,
disconnects, the process's own logs) and nothing of the test's event loop leaks in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.backends import RunningServer, free_port, stop, wait_until_up

MODEL = "smollm2-135m-instruct"


def prepared_model() -> Path:
    """The real SmolLM2 model, prepared once and cached (returns at once when it is)."""
    from inferos.engine.prepare import ensure_prepared

    return ensure_prepared(MODEL, progress=lambda message: None)


@contextlib.contextmanager
def engine_process(log_dir: Path, *args: str,
                   env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    port = free_port()
    log_path = log_dir / f"engine_{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inferos.cli", "engine", "--port", str(port),
             "--model", MODEL, "--threads", "1", *args],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/api/v1/live", process, log_path)
        yield RunningServer(url, process, log_path)
    finally:
        stop(process)


def sse_events(lines: Iterator[str]) -> list[dict | str]:
    """The ``data:`` payloads of an SSE stream, JSON-decoded except the final ``[DONE]``."""
    import json

    events: list[dict | str] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def named_sse_events(text: str) -> list[tuple[str, dict]]:
    """``(event, JSON data)`` of each event of a stream whose events are named (the
    Responses API's, pull's)."""
    import json

    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def kv_buffers_in_use(stats: dict) -> int:
    """KV buffers taken from the core's pool and not yet returned, as ``GET stats`` shows
    the core's own accounting."""
    return int(stats["kv_pool"]["in_use"])
