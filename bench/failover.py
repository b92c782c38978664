"""Fault to first passthrough byte: how long clients are exposed to a failing controller.

A client sends requests back to back through the agent while faults are injected into the
controller (an exception in a decision, or a hang that stops its heartbeat). For each
trial the time runs from the fault to the first byte of the first response that the proxy
forwarded in passthrough (recognised by the absence of the X-Request-Id the proxy adds
when it observes; the test-equipment upstream adds none). Prints p50 and max per kind.

    python bench/failover.py [--trials 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.streaming_upstream import build_app  # noqa: E402
from inferos.controller.agent import Agent  # noqa: E402
from inferos.controller.controller import ControllerSettings  # noqa: E402
from inferos.controller.decisions import decide  # noqa: E402
from inferos.controller.failsafe import FailsafeSettings  # noqa: E402
from inferos.controller.profiles import profile_policy  # noqa: E402
from inferos.proxy.settings import HostPort, ProxySettings  # noqa: E402

FAULT: dict[str, float | str | None] = {"kind": None, "at": None}


def faulty_decide(current, policy, seen):  # type: ignore[no-untyped-def]
    kind = FAULT["kind"]
    if kind is not None:
        FAULT["kind"] = None
        FAULT["at"] = time.monotonic()
        if kind == "exception":
            raise RuntimeError("injected fault")
        time.sleep(0.5)  # "hang": a blocking call stops the controller's loop
    return decide(current, policy, seen)


async def first_passthrough_byte(session: aiohttp.ClientSession, url: str) -> float:
    while True:
        async with session.get(url) as resp:
            first = await resp.content.read(1)
            at = time.monotonic()
            await resp.read()
            if first and "X-Request-Id" not in resp.headers:
                return at


async def main(trials: int) -> None:
    runner = web.AppRunner(build_app(4, 0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    settings = ControllerSettings(telemetry_dir=Path(tempfile.mkdtemp()),
                                  failsafe=FailsafeSettings(recover_after_s=0.2))
    agent = Agent(ProxySettings(upstream=upstream, listen=HostPort("127.0.0.1", 0),
                                admin=HostPort("127.0.0.1", 0)),
                  profile_policy("balanced"), settings, decide_fn=faulty_decide)
    results: dict[str, list[float]] = {"exception": [], "hang": []}
    async with agent, aiohttp.ClientSession() as session:
        url = agent.proxy.proxy_url + "/api/v1/health"
        for kind in results:
            for _ in range(trials):
                while agent.runtime.mode.passthrough:  # wait for recovery between trials
                    await asyncio.sleep(0.01)
                FAULT["at"] = None
                FAULT["kind"] = kind
                agent.controller._decide_now = True
                seen = await first_passthrough_byte(session, url)
                fault_at = FAULT["at"]
                assert isinstance(fault_at, float)
                results[kind].append((seen - fault_at) * 1000)
            await asyncio.sleep(0.6)
    await runner.cleanup()
    print(f"fault to first passthrough byte, {trials} trials each (ms):")
    print(f"{'fault':>10} | {'p50':>8} | {'max':>8} | target <= 100 ms (seed: <= 1000 ms)")
    for kind, values in results.items():
        print(f"{kind:>10} | {statistics.median(values):>8.1f} | {max(values):>8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    asyncio.run(main(parser.parse_args().trials))
