"""What the proxy adds: the same streaming workload sent directly and through the proxy, in
one run, at several concurrencies. Prints added TTFT and end-to-end p50/p99, chunks per
second through the proxy, and the proxy's RSS.

    python bench/proxy_overhead.py                 # fast deterministic upstream (test equipment)
    python bench/proxy_overhead.py --real          # and once more against llama.cpp's server
    python bench/proxy_overhead.py --quick         # fewer requests

Direct and proxied batches alternate (direct, proxied, direct, proxied...) so that drift in
this noisy machine's speed falls on both sides alike. Targets (issue 2): added TTFT p50 <= 1 ms
and p99 <= 5 ms at 32 concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.backends import free_port, llama_cpp_server, stop, wait_until_up  # noqa: E402

BODY = {"model": "bench", "stream": True, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Count."}]}


@dataclass
class Sample:
    ttft: float
    e2e: float
    chunks: int


async def one(session: aiohttp.ClientSession, url: str, body: dict) -> Sample:
    start = time.perf_counter()
    ttft = None
    chunks = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {"):
                chunks += 1
                if ttft is None and b'"content"' in line:
                    ttft = time.perf_counter() - start
    e2e = time.perf_counter() - start
    return Sample(ttft if ttft is not None else e2e, e2e, chunks)


async def batch(
    url: str, concurrency: int, requests: int, body: dict
) -> tuple[list[Sample], float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(range(requests))
        samples: list[Sample] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                samples.append(await one(session, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_proxy(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "inferos.cli", "serve", "--upstream", upstream,
         "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{admin}/v1/health", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("proxy did not start")


async def compare(label: str, upstream: str, proxy: str, proxy_pid: int,
                  concurrencies: list[int], per_side: int, rounds: int, body: dict,
                  path: str) -> None:
    print(f"\n== {label}: {per_side * rounds} streams per side and concurrency, "
          f"alternating in {rounds} rounds ==")
    print(f"{'conc':>4} | {'TTFT p50 direct/proxy (ms)':>27} | {'added p50':>9} | "
          f"{'added p99':>9} | {'e2e added p50':>13} | {'e2e added p99':>13} | "
          f"{'chunks/s via proxy':>18} | {'proxy RSS MiB':>13}")
    rss_peak = 0.0
    proc = psutil.Process(proxy_pid)
    for conc in concurrencies:
        direct: list[Sample] = []
        proxied: list[Sample] = []
        proxied_time = 0.0
        await batch(upstream + path, conc, conc, body)  # warm both paths' connections
        await batch(proxy + path, conc, conc, body)
        for _ in range(rounds):
            d, _ = await batch(upstream + path, conc, per_side, body)
            p, elapsed = await batch(proxy + path, conc, per_side, body)
            direct += d
            proxied += p
            proxied_time += elapsed
            rss_peak = max(rss_peak, proc.memory_info().rss / 2**20)
        dt = [s.ttft * 1000 for s in direct]
        pt = [s.ttft * 1000 for s in proxied]
        de = [s.e2e * 1000 for s in direct]
        pe = [s.e2e * 1000 for s in proxied]
        chunks_per_s = sum(s.chunks for s in proxied) / proxied_time
        print(f"{conc:>4} | {statistics.median(dt):>12.2f} / {statistics.median(pt):<12.2f} | "
              f"{pct(pt, 50) - pct(dt, 50):>+9.2f} | {pct(pt, 99) - pct(dt, 99):>+9.2f} | "
              f"{pct(pe, 50) - pct(de, 50):>+13.2f} | {pct(pe, 99) - pct(de, 99):>+13.2f} | "
              f"{chunks_per_s:>18.0f} | {rss_peak:>13.1f}")
    print(f"ratio TTFT p50 proxy/direct at c={concurrencies[-1]}: "
          f"{statistics.median(pt) / statistics.median(dt):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--real", action="store_true", help="also run against llama.cpp")
    parser.add_argument("--real-only", action="store_true", help="only run against llama.cpp")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    per_side, rounds = (16, 2) if args.quick else (64, 5)
    concurrencies = [1, 8, 32]

    if not args.real_only:
        equipment_run(args, per_side, rounds, concurrencies)
    if args.real or args.real_only:
        real_run(args)


def equipment_run(args: argparse.Namespace, per_side: int, rounds: int,
                  concurrencies: list[int]) -> None:
    port = free_port()
    upstream_proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "streaming_upstream.py"), "--port", str(port),
         "--tokens", str(args.tokens), "--gap-ms", str(args.gap_ms)])
    upstream = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(upstream + "/api/v1/health", upstream_proc, Path(os.devnull))
        proxy_proc, proxy = start_proxy(upstream)
        try:
            asyncio.run(compare(
                f"test-equipment upstream ({args.tokens} tokens, {args.gap_ms} ms apart)",
                upstream, proxy, proxy_proc.pid, concurrencies, per_side, rounds, BODY,
                "/api/v1/chat/completions"))
        finally:
            stop(proxy_proc)
    finally:
        stop(upstream_proc)



def real_run(args: argparse.Namespace) -> None:
    import tempfile

    with llama_cpp_server(Path(tempfile.mkdtemp())) as server:
        proxy_proc, proxy = start_proxy(server.url)
        body = {**BODY, "model": "smollm2", "max_tokens": 32, "temperature": 0}
        try:
            # llama-cpp-python serves one stream at a time, and with several concurrent
            # streams it cuts some short ("ASGI callable returned without completing
            # response"), directly as well as through the proxy: measure at concurrency 1.
            asyncio.run(compare("llama.cpp server (SmolLM2-135M, 32 tokens)", server.url,
                                proxy, proxy_proc.pid, [1], 8 if args.quick else 16, 2,
                                body, "/v1/chat/completions"))
        finally:
            stop(proxy_proc)


if __name__ == "__main__":
    main()
