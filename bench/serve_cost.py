"""What ``inferos serve`` costs a lone stream on a small machine: one plain engine, addressed
directly with nothing else running, against the same engine through ``inferos serve
--upstream`` (its proxy, controller loops, watchdog and liveness probe), in one run.

    python bench/serve_cost.py              # 3 rounds of 4 requests per side, ~4 minutes
    python bench/serve_cost.py --quick      # 1 round of 2

On two cores every wake-up of serve's threads takes a core from the engine's two threads,
so a control plane that polls often slows decoding even when it does nothing (issue 12's
A/B measured single-stream decode x0.82 with the safe profile at 2,048 tokens). The engine is the
A/B's OFF side (``--no-prefix-cache --max-batch 1 --no-speculation``), so nothing but serve
differs; serve is started for its rounds and stopped for the direct ones, which alternate
(direct, serve, direct, serve...) so drift falls on both alike. Both sides get the same
prompts in a round, each request its own (the engine reuses no prefix). Prints FTL p50 and
decode tok/s p50 per side, their ratios, and serve's CPU (cores) idle and while streaming.

Measured 2026-12-03 on main (4 rounds x 3 requests, ~450-token prompts, 128 tokens, same
prompts per side): serve/direct FTL x1.05, decode x0.97; serve's CPU 0.11 cores idle (its
1 ms fast loop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sse_client import Side, generate  # noqa: E402
from tests.backends import free_port  # noqa: E402
from tests.serve_child import child_env, started_inferos  # noqa: E402

MODEL = "smollm2-135m-instruct"
HOST = "127.0.0.1"
WORDS = ("river", "garden", "engine", "winter", "market", "lantern", "harbor", "meadow",
         "violin", "canyon", "orchard", "glacier")


def _prompt(i: int, words: int) -> str:
    lead = WORDS[i % len(WORDS)]
    return f"{lead} {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)) \
        + "\nWrite a short story about the words above."


def _cores(process: psutil.Process, seconds: float) -> float:
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return (after.user + after.system - before.user - before.system) / seconds


async def _round(side: Side, first: int, requests: int, words: int, max_tokens: int
                 ) -> tuple[list[float], list[float]]:
    ftl, tps = [], []
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(first, first + requests):
            stream = await generate(client, side, "completions",
                                    {"prompt": _prompt(i, words), "max_tokens": max_tokens,
                                     "ignore_eos": True})
            ftl.append((stream.stamps[0] - stream.sent) * 1000)
            if len(stream.stamps) > 1:
                tps.append((len(stream.stamps) - 1) / (stream.stamps[-1] - stream.stamps[0]))
    return ftl, tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--words", type=int, default=300, help="prompt length, in words")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    requests = args.requests or (2 if args.quick else 4)
    logs = Path(tempfile.mkdtemp(prefix="serve_cost-"))
    port = free_port()
    engine_url = f"http://{HOST}:{port}"
    engine_args = ["--host", HOST, "--port", str(port), "--model", MODEL, "--ctx-size", "4096",
                   "--threads", str(args.threads), "--no-prefix-cache", "--max-batch", "1",
                   "--no-speculation"]
    figures: dict[str, dict[str, list[float]]] = {
        s: {"ftl": [], "tps": [], "cores": []} for s in ("direct", "serve")}
    idle_cores: list[float] = []
    with started_inferos("engine", engine_args, child_env(), logs / "engine.log",
                         up_url=engine_url + "/api/v1/health", deadline_s=300):
        direct = Side("direct", engine_url, MODEL, "/api/v1")
        asyncio.run(_round(direct, 10_000, 1, args.words, 8))  # warm-up, untimed
        for r in range(rounds):
            n = r * requests  # both sides get the same prompts (the engine reuses none)
            ftl, tps = asyncio.run(_round(direct, n, requests, args.words, args.max_tokens))
            figures["direct"]["ftl"] += ftl
            figures["direct"]["tps"] += tps
            sport, admin = free_port(), free_port()
            serve_url = f"http://{HOST}:{sport}"
            # Pinned to the engine's own flags: serve pushes its live policy to an engine
            # that takes one, and its defaults (speculation, batching) would be measured
            # instead of serve's cost.
            env = child_env({"INFEROS_INFER_OS_TELEMETRY_DIR": str(logs / "telemetry"),
                             "INFEROS_INFER_OS_SPECULATION_ENABLED": "false",
                             "INFEROS_INFER_OS_SCHEDULER_MAX_BATCH": "1"})
            with started_inferos("serve", ["--upstream", engine_url, "--listen",
                                           f"{HOST}:{sport}", "--admin", f"{HOST}:{admin}"],
                                 env, logs / f"serve-{r}.log",
                                 up_url=serve_url + "/api/v1/health", deadline_s=120) as proc:
                process = psutil.Process(proc.pid)
                time.sleep(2.0)  # past its start
                idle_cores.append(_cores(process, 5.0))
                through = Side("serve", serve_url, MODEL, "/api/v1")
                before, started = process.cpu_times(), time.monotonic()
                ftl, tps = asyncio.run(_round(through, n, requests, args.words,
                                              args.max_tokens))
                after = process.cpu_times()
                figures["serve"]["cores"].append(
                    (after.user + after.system - before.user - before.system)
                    / (time.monotonic() - started))
            figures["serve"]["ftl"] += ftl
            figures["serve"]["tps"] += tps
            print(f"round {r + 1}/{rounds} done", flush=True)
    med = {s: {k: statistics.median(v) for k, v in f.items() if v} for s, f in figures.items()}
    print(f"\n{rounds} rounds x {requests} requests per side, ~{args.words}-word prompts, "
          f"{args.max_tokens} new tokens, {args.threads} engine threads")
    print(f"{'':8} {'FTL p50 ms':>12} {'decode tok/s p50':>18}")
    for side in ("direct", "serve"):
        print(f"{side:8} {med[side]['ftl']:12.1f} {med[side]['tps']:18.2f}")
    print(f"serve/direct: FTL x{med['serve']['ftl'] / med['direct']['ftl']:.3f}, "
          f"decode x{med['serve']['tps'] / med['direct']['tps']:.3f}")
    print(f"serve's CPU: idle {statistics.median(idle_cores):.3f} cores, while streaming "
          f"{med['serve']['cores']:.3f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
