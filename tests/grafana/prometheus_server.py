"""The real Prometheus (Debian's package), started by a test on a free port with a
generated scrape config that targets one agent's admin listener every second."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.backends import free_port, stop, wait_until_up


@contextlib.contextmanager
def prometheus(workdir: Path, target: str) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary is not None, "the test command installs Debian's prometheus"
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: inferos\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n")
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={workdir / 'data'}"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/-/ready", process, log)
        yield url
    finally:
        stop(process)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def wait_for_scrapes(url: str, count: int, timeout_s: float = 30) -> None:
    """Waits until Prometheus has scraped the target ``count`` more times."""
    def scrapes() -> float:
        result = query(url, 'count_over_time(up{job="inferos"}[10m])')
        return float(result[0]["value"][1]) if result else 0.0

    start = scrapes()
    deadline = time.monotonic() + timeout_s
    while scrapes() < start + count:
        assert time.monotonic() < deadline, "Prometheus did not scrape the agent"
        time.sleep(0.2)
