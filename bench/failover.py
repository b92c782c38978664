"""Fault to first passthrough byte: how long clients are exposed to a failing controller,
and whether a stopped process is mistaken for one.

A client sends requests back to back through the agent while faults are injected into the
controller through its public options: ``exception``, a system sampler that raises in the
slow loop; ``hang``, a token counter that blocks the controller's thread for 0.5 s (its
heartbeat stops). For each trial the time runs from the fault to the first byte of the
first response that the proxy forwarded in passthrough (recognised by the absence of the
X-Request-Id the proxy adds when it observes; the test-equipment upstream adds none).
Prints p50 and max per kind, on the default staleness bound.

``starved``: the agent runs in a child process, which is stopped (SIGSTOP) for 300 ms and
continued, once per trial; no trip must follow. Failovers are counted from the child's
Prometheus ``/metrics`` on its admin port, over HTTP.

    python bench/failover.py [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.streaming_upstream import build_app  # noqa: E402
from inferos.controller.agent import Agent  # noqa: E402
from inferos.controller.controller import ControllerSettings  # noqa: E402
from inferos.controller.failsafe import FailsafeSettings  # noqa: E402
from inferos.controller.profiles import profile_policy  # noqa: E402
from inferos.controller.system_sample import SystemSample, SystemSampler  # noqa: E402
from inferos.proxy.settings import HostPort, ProxySettings  # noqa: E402

TARGET_MS = 100.0
HANG_S = 0.5
STOP_S = 0.3
HANG_MODEL = "bench-hang"
FAULT: dict[str, float | str | None] = {"kind": None, "at": None}


def _hanging_counter(text: str) -> int:
    if FAULT["kind"] == "hang":
        FAULT["kind"] = None
        FAULT["at"] = time.monotonic()
        time.sleep(HANG_S)  # a blocking call: the controller's loop stops, and its heartbeat
    return len(text) // 4


async def _upstream() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(build_app(4, 0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


def _agent(upstream: str) -> Agent:
    settings = ControllerSettings(telemetry_dir=Path(tempfile.mkdtemp()),
                                  failsafe=FailsafeSettings(recover_after_s=0.2))
    here = HostPort("127.0.0.1", 0)
    return Agent(ProxySettings(upstream=upstream, listen=here, admin=here),
                 profile_policy("balanced"), settings, sampler=_faulty_sampler(),
                 token_counters={HANG_MODEL: _hanging_counter})


def _faulty_sampler() -> Callable[[], SystemSample]:
    real = SystemSampler()

    def sample() -> SystemSample:
        if FAULT["kind"] == "exception":
            FAULT["kind"] = None
            FAULT["at"] = time.monotonic()
            raise RuntimeError("injected fault")
        return real.sample()
    return sample


async def first_passthrough_byte(session: aiohttp.ClientSession, url: str) -> float:
    while True:
        async with session.get(url) as resp:
            first = await resp.content.read(1)
            at = time.monotonic()
            await resp.read()
            if first and "X-Request-Id" not in resp.headers:
                return at


async def faults(trials: int) -> dict[str, list[float]]:
    runner, upstream = await _upstream()
    agent = _agent(upstream)
    results: dict[str, list[float]] = {"exception": [], "hang": []}
    plane = agent.proxy.data_plane
    async with agent, aiohttp.ClientSession() as session:
        url = agent.proxy.proxy_url + "/api/v1/health"
        chat = agent.proxy.proxy_url + "/v1/chat/completions"
        for kind in results:
            for _ in range(trials):
                while plane.snapshot.passthrough:  # wait for recovery between trials
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                FAULT["at"] = None
                FAULT["kind"] = kind
                if kind == "hang":  # the controller counts this prompt's tokens, and hangs
                    async with session.post(chat, json={"model": HANG_MODEL, "messages": [
                            {"role": "user", "content": "hang"}]}) as resp:
                        await resp.read()
                seen = await first_passthrough_byte(session, url)
                fault_at = FAULT["at"]
                assert isinstance(fault_at, float)
                results[kind].append((seen - fault_at) * 1000)
            await asyncio.sleep(HANG_S + 0.2)
    await runner.cleanup()
    return results


# -- starved: a child process, stopped from here ---------------------------------------
async def serve_child() -> None:
    runner, upstream = await _upstream()
    agent = _agent(upstream)
    async with agent:
        print(json.dumps({"proxy": agent.proxy.proxy_url, "admin": agent.proxy.admin_url}),
              flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def starved(trials: int) -> tuple[int, int, int]:
    """(stops, failovers after them, stale heartbeats excused as starvation)."""
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        urls = json.loads(child.stdout.readline())
        async with aiohttp.ClientSession() as session:
            async def metrics() -> tuple[float, float]:
                async with session.get(urls["admin"] + "/metrics") as resp:
                    text = await resp.text()
                return (_metric(text, "inferos_failovers_total"),
                        _metric(text, "inferos_failsafe_starved_total"))

            await asyncio.sleep(0.5)
            trips0, excused0 = await metrics()
            for _ in range(trials):
                os.kill(child.pid, signal.SIGSTOP)
                await asyncio.sleep(STOP_S)
                os.kill(child.pid, signal.SIGCONT)
                await asyncio.sleep(0.2)
                async with session.get(urls["proxy"] + "/api/v1/health") as resp:
                    await resp.read()
            trips, excused = await metrics()
        return trials, int(trips - trips0), int(excused - excused0)
    finally:
        child.kill()
        child.wait()


async def main(trials: int) -> None:
    results = await faults(trials)
    stops, trips, excused = await starved(trials)
    bound = FailsafeSettings()
    print(f"fault to first passthrough byte, {trials} trials each (ms), stale bound "
          f"{bound.stale_after_s * 1000:.0f} ms, watchdog every "
          f"{bound.watch_period_s * 1000:.0f} ms:")
    print(f"{'fault':>10} | {'p50':>8} | {'max':>8} | target <= {TARGET_MS:.0f} ms "
          "(seed: <= 1000 ms)")
    for kind, values in results.items():
        worst = max(values)
        verdict = "met" if worst <= TARGET_MS else "NOT met"
        print(f"{kind:>10} | {statistics.median(values):>8.1f} | {worst:>8.1f} | {verdict}")
    print(f"{'starved':>10} | {stops} stops of {STOP_S * 1000:.0f} ms: {trips} failovers "
          f"(target 0), {excused} stale heartbeats excused as starvation")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Every injected fault logs its traceback and its trip; the table is what matters here.
    logging.getLogger("inferos").setLevel(logging.CRITICAL)
    asyncio.run(serve_child() if args.serve else main(args.trials))
