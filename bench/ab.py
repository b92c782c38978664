"""Is this machine faster with Infer-OS or without it? The seed's acceptance run: ON against
OFF over prompt length x batch x profile, with a report, plots and a regression gate.

    inferos bench ab --out ab-report               # the full run: 49 minutes on 2 cores
    inferos bench ab --out /tmp/ab --quick         # a smoke run (the test suite's)
    inferos bench ab --out ab --upstream http://127.0.0.1:13305 --model NAME   # your Lemonade
    inferos bench ab --out ab --baseline old/results.json   # exit 1 on a regression
    inferos bench ab --out ab --compare new/results.json --baseline old/results.json
    inferos bench ab --out docs/ab --readme README.md   # the README's table, regenerated

(also ``python bench/ab.py ...``). OFF is the plain engine (one request at a time, no
prefix reuse, no speculation, exact KV; bench/ab_sides.py) or, with ``--upstream``, the
user's backend addressed directly; ON is ``inferos serve`` in front of it with each
profile. Every side is started fresh for each repeat and gets the same prompts, in the
same order, with the same seed, at temperature 0 (so every side's output is determined by
the weights alone). The workloads are in bench/ab_workloads.py, the SLO
criteria and the gate in bench/ab_verdict.py, the output in bench/ab_report.py; after the
cells, a controller fault is injected into a fresh ``inferos serve`` of the default profile
(bench/ab_fallback.py).

Order: for each repeat, every side in turn (off, then the profiles), so that drift in the
machine's speed falls on all sides alike across repeats. Each side is warmed up with short
prompts of its own first (untimed). The machine may be shared: ``results.json`` records the
cores other processes used during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ab_fallback import fallback_phase  # noqa: E402
from bench.ab_report import headline_side, update_readme, write_outputs  # noqa: E402
from bench.ab_sides import OFF, PROFILES, MemoryWatch, Running, Target, started_side  # noqa: E402
from bench.ab_verdict import gate, slo  # noqa: E402
from bench.ab_workloads import FULL, QUICK, Cell, Plan, RunFigures, chat_turn, measure  # noqa: E402
from bench.ab_workloads import build_cells as _build_cells  # noqa: E402
from bench.inferos_serve import wait_idle  # noqa: E402
from bench.licence_prompts import Prompts, licence_ids  # noqa: E402
from bench.sse_client import BenchError, Side, generate  # noqa: E402

MODEL = "smollm2-135m-instruct"
TIMEOUT = httpx.Timeout(600.0, connect=30.0)
WARM_TOKENS = 48


class Progress:
    """A progress bar on stderr: one line redrawn on a terminal, a line per step elsewhere."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.began = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.began
        left = elapsed / self.done * (self.total - self.done)
        filled = round(30 * self.done / self.total)
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                f"{elapsed:4.0f} s, ~{left:4.0f} s left: {what}")
        print(("\r" + line.ljust(110)) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _machine() -> dict[str, Any]:
    import psutil

    return {"hostname": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "python": platform.python_version()}


def _cpu_busy_s() -> float:
    import psutil

    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "nice", 0.0))


def _tree_cpu_s() -> float:
    import psutil

    total = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    try:
        answer = await client.get(url)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body
    except (httpx.HTTPError, ValueError):
        return None


async def _settle(client: httpx.AsyncClient, running: Running) -> dict[str, Any] | None:
    """Waits until the engine holds no sequence; returns its stats then (None: none)."""
    if running.stats_url is None:
        return None
    await wait_idle(client, running.side)
    return await _get_json(client, running.stats_url)


def _reused(stats: dict[str, Any] | None) -> int | None:
    """The prompt tokens the engine's prefix cache has served so far (None: no stats)."""
    if not stats or "prefix_cache" not in stats:
        return None
    return int(stats["prefix_cache"].get("reused_tokens") or 0)


def _kv_bytes(stats: dict[str, Any] | None) -> dict[str, int | None] | None:
    if not stats or "kv_levels" not in stats:
        return None
    memory = stats.get("memory") or {}
    out: dict[str, int | None] = {"live": memory.get("batch_buffer_resident_bytes")}
    for level in ("L0", "L1", "L2", "L3"):
        out[level] = int(stats["kv_levels"].get(level, {}).get("bytes", 0))
    return out


async def _reported(client: httpx.AsyncClient, running: Running) -> dict[str, Any]:
    """delta_ppl_est and spec_accept as the controller reports them (ON), else null."""
    if running.admin is None:
        return {"delta_ppl_est": None, "spec_accept": None}
    metrics = await _get_json(client, running.admin + "/v1/metrics") or {}
    quality = metrics.get("quality") or {}
    return {"delta_ppl_est": quality.get("delta_ppl_est"),
            "spec_accept": quality.get("spec_accept")}


async def _warm(client: httpx.AsyncClient, side: Side, prompts: list[str], batch: int) -> None:
    """Untimed: the first runs at each batch shape pay the allocators' first touches."""
    body = {"max_tokens": 4}
    await generate(client, side, "completions", {**body, "prompt": prompts[0]})
    await asyncio.gather(*(generate(client, side, "completions", {**body, "prompt": p})
                           for p in prompts[1:batch + 1]))


class SideRun:
    """One side's cells in one repeat, each recorded into ``results`` with the memory, KV
    and prefix-cache figures read around it."""

    def __init__(self, running: Running, client: httpx.AsyncClient, results: dict[str, Any],
                 repeat: int) -> None:
        self.running, self.client, self.results, self.repeat = running, client, results, repeat
        self.watch = MemoryWatch(running.pids)
        self.reused: int | None = None

    async def record(self, key: str, workload: str, params: dict[str, Any],
                     got: RunFigures) -> None:
        stats = await _settle(self.client, self.running)
        now = _reused(stats)
        # prompt tokens the prefix cache served during this cell
        cache = None if now is None or self.reused is None else now - self.reused
        self.reused = now
        entry = self.results["cells"].setdefault(
            key, {"workload": workload, "params": params, "sides": {}})
        entry["sides"].setdefault(self.running.name, []).append(
            {**got.as_dict(), "repeat": self.repeat, "memory": self.watch.peak(),
             "kv_bytes": _kv_bytes(stats), "reused_tokens": cache,
             "reported": await _reported(self.client, self.running)})
        self.watch.reset()

    async def cells(self, cells: list[Cell], warm: list[str], batch: int,
                    progress: Progress) -> None:
        side = self.running.side
        await _warm(self.client, side, warm, batch)
        self.reused = _reused(await _settle(self.client, self.running))
        self.watch.start()
        try:
            for cell in cells:
                if cell.workload == "chat":
                    history: list[dict[str, str]] = []
                    for turn, question in enumerate(cell.chat, start=1):
                        got = await chat_turn(self.client, side, history, question,
                                              cell.max_tokens)
                        await self.record(f"chat/turn{turn}", "chat", {"turn": turn}, got)
                else:
                    got = await measure(self.client, side, cell)
                    await self.record(cell.key, cell.workload, cell.params, got)
                progress.step(f"repeat {self.repeat + 1}, {self.running.name}, {cell.key}")
        finally:
            self.watch.stop()


async def run_side(running: Running, cells: list[Cell], warm: list[str], batch: int,
                   results: dict[str, Any], progress: Progress, repeat: int) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        await SideRun(running, client, results, repeat).cells(cells, warm, batch, progress)


def _sides(plan: Plan) -> list[str]:
    return [OFF, *plan.profiles]


def run(plan: Plan, target: Target, out_dir: Path, say: Callable[[str], None]
        ) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from inferos.engine.prepare import ensure_prepared

    folder = ensure_prepared(MODEL, progress=say)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompts = Prompts(licence_ids(folder))

    def decode(ids: list[int]) -> str:
        text: str = tokenizer.decode(ids)
        return text

    cells = _build_cells(plan, prompts, decode)
    batch = max(plan.batches)
    warm = [decode(prompts.take(WARM_TOKENS)) for _ in range(batch + 1)]
    sides = _sides(plan)
    described = ("the embedded engine" if target.upstream is None
                 else f"the backend at {target.upstream}")
    results: dict[str, Any] = {
        "schema": 1, "machine": _machine(), "sides": sides, "cells": {}, "fallback": None,
        "run": {"target": f"{target.model} on {described}, {target.threads} threads, "
                          f"context {target.ctx_size}",
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "quick": plan.quick, "repeats": plan.repeats, "duration_s": 0.0,
                "others_cores": None}}
    progress = Progress(plan.repeats * len(sides) * len(cells) + 1)
    began, busy, tree = time.monotonic(), _cpu_busy_s(), _tree_cpu_s()
    # The sides' own output: kept (and named) only when the run fails.
    logs = Path(tempfile.mkdtemp(prefix="inferos-ab-logs-"))
    try:
        for repeat in range(plan.repeats):
            for name in sides:
                with started_side(name, target, logs) as running:
                    asyncio.run(run_side(running, cells, warm, batch, results, progress,
                                         repeat))
        headline = "balanced" if "balanced" in plan.profiles else plan.profiles[0]
        with started_side(headline, target, logs / "fallback") as running:
            fallback = asyncio.run(fallback_phase(running, plan.fallback_s))
        results["fallback"] = {"side": headline, **fallback.as_dict()}
        progress.step("fallback")
    except BaseException:
        progress.close()
        say(f"the run failed; the sides' logs are in {logs}")
        raise
    progress.close()
    shutil.rmtree(logs, ignore_errors=True)
    wall = time.monotonic() - began
    others = ((_cpu_busy_s() - busy) - (_tree_cpu_s() - tree)) / wall
    results["run"].update(duration_s=round(wall, 1), others_cores=round(max(0.0, others), 2))
    return results


def _summary(results: dict[str, Any], say: Callable[[str], None]) -> None:
    for side in results["sides"][1:]:
        verdict = slo(results, side)
        shown = ", ".join(
            f"{r['criterion']} {'-' if r['measured'] is None else round(r['measured'], 2)}"
            f" ({'met' if r['met'] else 'not met'})" for r in verdict["criteria"])
        say(f"{side}: {verdict['verdict']}: {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argparse.ArgumentParser(
        prog="bench/ab.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_args(parser.parse_args(argv), parser)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for report.md, report.html, the plots and results.json")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: L 128 and 512, batch 1 and 2, one run, balanced only")
    parser.add_argument("--upstream", default=None,
                        help="a backend you run (e.g. Lemonade at http://127.0.0.1:13305): "
                             "OFF talks to it directly, ON through inferos serve")
    parser.add_argument("--model", default=None,
                        help=f"the model to ask for (default {MODEL}; with --upstream the "
                             "first model the backend lists)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    parser.add_argument("--ctx-size", type=int, default=4096,
                        help="engine context (default 4096)")
    parser.add_argument("--profiles", default=None,
                        help="comma-separated profiles to run (default all three; "
                             "--quick: balanced)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per cell (default 3; --quick: 1)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an earlier results.json: exit 1 when a cell fell by more than "
                             "5%% beyond its spread")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also put the SLO table and a plot into this README, between "
                             "its 'inferos bench ab' markers")
    parser.add_argument("--compare", type=Path, default=None,
                        help="gate this results.json against --baseline (and write its "
                             "report) without running anything")
    return parser


def _plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Plan:
    import dataclasses

    plan = QUICK if args.quick else FULL
    if args.profiles:
        chosen = tuple(p.strip() for p in args.profiles.split(",") if p.strip())
        unknown = [p for p in chosen if p not in PROFILES]
        if unknown or not chosen:
            parser.error(f"--profiles: choose from {', '.join(PROFILES)}")
        plan = dataclasses.replace(plan, profiles=chosen)
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        plan = dataclasses.replace(plan, repeats=args.repeats)
    return plan


def _upstream_model(url: str, prefix: str) -> str:
    answer = httpx.get(f"{url}{prefix}/models", timeout=30)
    answer.raise_for_status()
    data = answer.json().get("data") or []
    if not data:
        raise BenchError(f"{url}{prefix}/models lists no model; give --model")
    return str(data[0]["id"])


def run_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.compare is not None:
        if args.baseline is None:
            parser.error("--compare needs --baseline")
        results = json.loads(args.compare.read_text())
    else:
        plan = _plan(args, parser)
        upstream = args.upstream.rstrip("/") if args.upstream else None
        model = args.model or (_upstream_model(upstream, "/api/v1") if upstream else MODEL)
        target = Target(model=model, threads=args.threads, ctx_size=args.ctx_size,
                        upstream=upstream)
        results = run(plan, target, args.out, say)
    regressions = None
    if args.baseline is not None:
        regressions = gate(results, json.loads(args.baseline.read_text()))
    write_outputs(results, args.out, regressions)
    if args.readme is not None:
        update_readme(results, args.readme, args.out)
    _summary(results, say)
    say(f"headline ({headline_side(results)}): {slo(results, headline_side(results))['verdict']}"
        f"; report in {args.out / 'report.md'}")
    if regressions:
        say(f"regression gate: {len(regressions)} cell(s) worse than the baseline:")
        for regression in regressions:
            say("  " + regression.describe())
        return 1
    if regressions is not None:
        say("regression gate: no cell worse than the baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
