"""Live policy to the engine: POST /inferos/v1/policy -> ack, and -> visible in stats.

Starts the real engine (``inferos engine`` on a free port, the prepared SmolLM2), parks
some KV with a few chats, then measures, each ``--n`` times, with one keep-alive client as
the controller has:

  ack, idle                 POST of a new policy version until its 200 ack
  ack, generating           the same while a streaming generation runs (a sample counts
                            only if the stream was producing tokens before the POST and
                            still after the ack: the worker thread was busy throughout)
  visible in stats, ...     from the POST until GET /api/v1/stats shows the new version
  re-leveled, idle          from the POST until stats say the parked KV was re-leveled
                            to it (the worker does that as soon as it is free, so while
                            generating it waits for the generation: not a target)

  agent end to end          POST /v1/policy on Infer-OS's agent API (an in-process agent in
                            front of the same engine) until its answer lists the new
                            kv.recent_window as applied, i.e. acknowledged by the engine:
                            proxy loop -> controller thread -> engine -> answer

Each POST alternates the KV window and thresholds, so the engine swaps a real change.
Prints p50/p95/max per row and whether every ack and stats round trip met 100 ms (the
design's target for policy reaching the engine), judged on the maximum.

    python bench/live_policy.py [--n 50] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.backends import wait_until_up  # noqa: E402

MODEL = "smollm2-135m-instruct"
POLICY = "/inferos/v1/policy"
TARGET_MS = 100.0
TEXT = Path("/usr/share/common-licenses/GPL-3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def engine(threads: int | None) -> Iterator[str]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="live_policy_engine_", suffix=".log",
                                      delete=False)
    argv = [sys.executable, "-m", "inferos.cli", "engine", "--port", str(port),
            "--model", MODEL]
    if threads:
        argv += ["--threads", str(threads)]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/api/v1/live", process, Path(log.name), deadline_s=180)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def policy(version: int) -> dict[str, Any]:
    odd = version % 2 == 1
    return {
        "version": version,
        "kv": {"recent_window": 96 if odd else 64, "sink_tokens": 4,
               "level_thresholds": ({"L1_int8": 0.8, "L2_int4": 0.6, "L3_evict": 0.2} if odd
                                    else {"L1_int8": 0.7, "L2_int4": 0.5, "L3_evict": 0.3}),
               "allow_evict": False},
        "io": {"host_pool_bytes": 4096 * 2**20},
        "quality": {"max_delta_ppl": 0.5, "min_accept_rate": 0.5},
        "scheduler": {"mode": "cpu_only", "prefill_device": "cpu", "decode_device": "cpu",
                      "max_batch": 8, "max_queue": 32, "tpot_budget_ms": 100.0},
        "speculation": {"enabled": True, "max_draft": 8},
    }


class Stream:
    """Streaming generations back to back on a thread, until ``stop``; ``tokens`` counts
    the SSE data lines of the one running, ``active`` says whether one is producing."""

    def __init__(self, url: str, max_tokens: int) -> None:
        self.url, self.max_tokens = url, max_tokens
        self.tokens = 0
        self.active = False
        self.generations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stream", daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self.active:
            if time.monotonic() > deadline:
                raise SystemExit("the streaming generation never started")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)

    def _run(self) -> None:
        body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": self.max_tokens,
                "temperature": 0, "stream": True}
        with httpx.Client(timeout=300) as client:
            while not self._stop.is_set():
                self.tokens = 0
                with client.stream("POST", self.url + "/api/v1/completions",
                                   json=body) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            self.tokens += 1
                            self.active = self.tokens >= 2
                        if self._stop.is_set():
                            break
                self.active = False
                self.generations += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(n: int, once: Callable[[], float | None]) -> list[float]:
    samples: list[float] = []
    attempts = 0
    while len(samples) < n and attempts < 4 * n:
        attempts += 1
        sample = once()
        if sample is not None:
            samples.append(sample)
    return samples


async def agent_end_to_end(url: str, n: int) -> list[float]:
    """POST /v1/policy -> answer with the live key applied, through a real agent."""
    from inferos.controller.agent import Agent
    from inferos.controller.controller import ControllerSettings
    from inferos.controller.lemonade_backend import LemonadeBackend
    from inferos.controller.profiles import profile_policy
    from inferos.proxy.settings import HostPort, ProxySettings

    settings = ControllerSettings(telemetry_dir=Path(tempfile.mkdtemp()))
    agent = Agent(ProxySettings(upstream=url, listen=HostPort("127.0.0.1", 0),
                                admin=HostPort("127.0.0.1", 0)),
                  profile_policy("balanced"), settings, LemonadeBackend(url))
    samples: list[float] = []
    async with agent, httpx.AsyncClient(timeout=60) as client:
        while agent.controller.live_version is None:  # the first push, at start
            await asyncio.sleep(0.05)
        for i in range(n):
            window = 96 + (i % 2) * 32
            started = time.perf_counter()
            response = await client.post(agent.proxy.admin_url + "/v1/policy",
                                         json={"kv": {"recent_window": window}})
            elapsed = (time.perf_counter() - started) * 1000
            key = response.json()["keys"]["kv.recent_window"]
            if key["status"] == "applied" and key["in_effect"] == window:
                samples.append(elapsed)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="round trips per row (default 50)")
    parser.add_argument("--quick", action="store_true", help="10 round trips per row")
    parser.add_argument("--threads", type=int, default=None,
                        help="the engine's onnxruntime threads (default: its own default)")
    args = parser.parse_args()
    n = 10 if args.quick else args.n
    version = 0

    with engine(args.threads) as url, httpx.Client(timeout=60) as client:
        text = TEXT.read_text()
        for i in range(2 if args.quick else 4):  # parked KV for the re-levels to move
            client.post(url + "/api/v1/chat/completions", timeout=300, json={
                "model": MODEL, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": text[2000 + i * 1300:
                                                              3300 + i * 1300]}]},
                        ).raise_for_status()

        def post() -> tuple[int, float]:
            nonlocal version
            version += 1
            started = time.perf_counter()
            response = client.post(url + POLICY, json=policy(version))
            response.raise_for_status()
            assert response.json()["version"] == version
            return version, started

        def stats_show(wanted: int, key: str) -> float:
            while True:
                shown = client.get(url + "/api/v1/stats").json()["policy"]
                if shown[key] >= wanted:
                    return time.perf_counter()
                if key == "releveled_version":
                    time.sleep(0.002)

        def ack() -> float:
            _, started = post()
            return (time.perf_counter() - started) * 1000

        def visible() -> float:
            v, started = post()
            return (stats_show(v, "version") - started) * 1000

        def releveled() -> float:
            v, started = post()
            return (stats_show(v, "releveled_version") - started) * 1000

        rows: list[tuple[str, list[float], bool]] = []
        rows.append(("ack, idle", measure(n, ack), True))
        rows.append(("visible in stats, idle", measure(n, visible), True))
        rows.append(("re-leveled, idle", measure(n, releveled), False))
        with Stream(url, 150 if args.quick else 400) as stream:
            def busy(sample: Callable[[], float]) -> Callable[[], float | None]:
                def once() -> float | None:
                    if not stream.active:
                        time.sleep(0.05)  # between two generations
                        return None
                    before, generation = stream.tokens, stream.generations
                    value = sample()
                    running = stream.active and stream.generations == generation
                    return value if running and stream.tokens >= before else None
                return once

            rows.append(("ack, generating", measure(n, busy(ack)), True))
            rows.append(("visible in stats, generating", measure(n, busy(visible)), True))
            generations = stream.generations + 1
        rows.append(("agent end to end, idle", asyncio.run(agent_end_to_end(url, n)), True))

    print(f"POST /inferos/v1/policy on the real engine ({MODEL}), {n} round trips per row; "
          f"{generations} streaming generation(s) ran under the 'generating' rows")
    print()
    print("| measurement                  |  n | p50 ms | p95 ms | max ms |")
    print("|------------------------------|---:|-------:|-------:|-------:|")
    worst = 0.0
    for name, samples, target in rows:
        if not samples:
            print(f"| {name:<28} |  0 |      - |      - |      - |")
            continue
        p50, p95, top = (statistics.median(samples), percentile(samples, 0.95), max(samples))
        print(f"| {name:<28} | {len(samples):>2} | {p50:>6.1f} | {p95:>6.1f} | {top:>6.1f} |")
        if target:
            worst = max(worst, top)
    print()
    complete = all(len(samples) == n for _, samples, target in rows if target)
    met = complete and worst <= TARGET_MS
    print(f"target <= {TARGET_MS:.0f} ms: {'met' if met else 'not met'} "
          f"(slowest ack or stats round trip {worst:.1f} ms"
          + ("" if complete else "; some rows are short of samples") + ")")


if __name__ == "__main__":
    main()
