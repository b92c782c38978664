"""Blue/green reconfiguration under steady load: failed requests (must be 0) and the
latency added while the backend is switched, against a window without switches, one run.

The agent runs a managed llama.cpp server (SmolLM2-135M); two clients stream short chats
back to back; the policy alternates the context size (2048 <-> 4096) and KV type
(f16 <-> q8_0), each change a full blue/green switch.

    python bench/reconfigure.py [--switches 4]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferos.controller.agent import Agent  # noqa: E402
from inferos.controller.backend_child import llamacpp_launcher  # noqa: E402
from inferos.controller.controller import ControllerSettings  # noqa: E402
from inferos.controller.managed_backend import LLAMACPP, ManagedBackend  # noqa: E402
from inferos.controller.profiles import profile_policy  # noqa: E402
from inferos.controller.snapshot import BackendSettings  # noqa: E402
from inferos.proxy.settings import HostPort, ProxySettings  # noqa: E402
from tests.backends import smollm2_gguf  # noqa: E402

BODY = {"model": "smollm2", "max_tokens": 16, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "Name a colour."}]}


async def client(url: str, stop: asyncio.Event, log: list[tuple[float, float, bool]]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(url, json=BODY) as resp:
                    ok = resp.status == 200 and b"[DONE]" in await resp.read()
            except aiohttp.ClientError:
                ok = False
            log.append((started, time.monotonic() - started, ok))


async def main(switches: int) -> None:
    policy = profile_policy("safe")
    first = BackendSettings(ctx_size=2048)
    backend = ManagedBackend(LLAMACPP, llamacpp_launcher(str(smollm2_gguf()), "smollm2"),
                             first)
    agent = Agent(ProxySettings(upstream="", listen=HostPort("127.0.0.1", 0),
                                admin=HostPort("127.0.0.1", 0)), policy,
                  ControllerSettings(telemetry_dir=Path(tempfile.mkdtemp()),
                                     reconfigure_cooldown_s=0), backend)
    log: list[tuple[float, float, bool]] = []
    windows: list[tuple[float, float]] = []
    async with agent:
        stop = asyncio.Event()
        url = agent.proxy.proxy_url + "/v1/chat/completions"
        clients = [asyncio.get_running_loop().create_task(client(url, stop, log))
                   for _ in range(2)]
        await asyncio.sleep(8)  # baseline window
        baseline_end = time.monotonic()
        for i in range(switches):
            patch = ({"profile": "balanced", "backend": {"ctx_size": 4096}} if i % 2 == 0
                     else {"profile": "safe", "backend": {"ctx_size": 2048}})
            done = backend.switches + 1
            began = time.monotonic()
            agent.controller.set_policy(patch)
            while backend.switches < done or agent.controller.actuating:
                await asyncio.sleep(0.01)
            windows.append((began, time.monotonic()))
            await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*clients)

    def inside(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    base = [d * 1000 for t, d, ok in log if t < baseline_end and ok]
    during = [d * 1000 for t, d, ok in log if inside(t) and ok]
    failed = sum(1 for _, _, ok in log if not ok)
    switch_s = [b - a for a, b in windows]
    print(f"requests: {len(log)}, failed: {failed} (must be 0); switches: {len(windows)}, "
          f"each {statistics.median(switch_s):.2f} s (median, start to old stopped)")
    print(f"{'window':>16} | {'n':>4} | {'e2e p50 ms':>10} | {'e2e p95 ms':>10}")
    for name, values in (("no switch", base), ("during switch", during)):
        if values:
            p95 = sorted(values)[max(0, round(0.95 * len(values)) - 1)]
            print(f"{name:>16} | {len(values):>4} | {statistics.median(values):>10.1f} | "
                  f"{p95:>10.1f}")
    if base and during:
        print(f"added e2e p50 during a switch: "
              f"{statistics.median(during) - statistics.median(base):+.1f} ms "
              f"(ratio {statistics.median(during) / statistics.median(base):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=4)
    asyncio.run(main(parser.parse_args().switches))
