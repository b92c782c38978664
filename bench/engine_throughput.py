"""Engine throughput (issue 10): continuous batching, the prefill/decode scheduler and
prompt-lookup speculation, through ``inferos serve``, against llama.cpp's own server, in
one run whose servers are all children of this process.

  inferos on     ``inferos serve`` in front of the embedded engine (bench/inferos_serve.py),
                 default policy: batches of up to scheduler.max_batch, chunked prefill
                 within scheduler.tpot_budget_ms, speculation for a sequence decoding alone
  inferos off    the same process after POST /v1/policy {scheduler.max_batch: 1,
                 speculation.enabled: false} on its agent API (answered "applied"): one
                 sequence at a time, as the engine served before batching
  llama-server   bench/llama_server_peer.py: ``llama-server -np 8`` on the GGUF the ONNX
                 model was prepared from (its weights Q4_1, ours fp32), the same threads;
                 ``--spec-type ngram-mod`` for its speculation column. Where
                 scripts/build-llama-server.sh has not built it the rows say "not built".

1. Streams. 1, 4 and 8 concurrent streams; prompts of 128 and 1,024 tokens of licence text
   from /usr/share/common-licenses, sent as token ids to ``completions`` (no chat
   template: greedy decoding runs on instead of ending a turn); 128 new tokens each;
   temperature 0. Every prompt starts with a token no earlier prompt of the run started
   with, so no prefix cache serves any of it ("cache": the most prompt tokens a server
   reused anyway). ``off`` gets prompts of its own (same lengths, other offsets), since
   ``on`` parked the KV of the first set; llama-server gets ``on``'s. Per stream, client
   side over SSE (bench/sse_client.py): TTFT from sending to the first chunk with content,
   queue included; TPOT (last chunk - first chunk) / (tokens - 1). Per round: aggregate
   tok/s = all streams' tokens / wall time from the first request to the last token
   (prefill counts against it, as a user sees it). Tokens are the server's own count; an
   end-of-text token ends a stream early, and "tokens" says how many came. "queue" is the
   engine's queue_ms, "batch" its mean rows per decode step over the round, "others" the
   cores other processes used meanwhile. On and off take turns round by round, so that
   drift in the machine's speed falls on both alike; llama-server runs after them (the
   idle ``inferos serve`` would take CPU from it).
   Targets: on/off x3 at 8 streams; on/llama-server >= 1 at 8 streams.
2. Interleaving. 4 streams decode; once each has streamed a few tokens a 2,048-token
   prompt arrives. The gaps between the streams' chunks that overlap its prefill (sending
   it to its first token), with the default tpot_budget_ms (interleaved) and with 60,000
   ms (every chunk full size: not interleaved); the streams then go away (disconnect).
   Target: the interleaved TPOT p95 within the budget.
3. Speculation. One stream, temperature 0, chat requests on tasks grounded in their input
   (copy, edit, rewrite, summarize licence text) and one free-form story: decode tok/s
   (1 / TPOT) with speculation on and off, and whether the outputs are identical; the same
   for llama-server without and with ngram-mod. Each prompt is sent once untimed first,
   so every measured run finds it in the prefix cache alike; ours take turns, plain then
   speculative, run by run (median of 3 each). Targets: grounded x1.5
   (geometric mean), the story at most 5% slower.

The machine may be shared: every round of section 1, and sections 2 and 3 as a whole, say
how many cores other processes used while they ran (the machine's busy time from
/proc/stat minus this process tree's); above a few tenths the figures are suspect.

    python bench/engine_throughput.py [--threads 2] [--max-tokens 128]
    python bench/engine_throughput.py --quick   # 1 and 2 streams, 128-token prompts,
                                                # 16 tokens, 512-token prefill, copy + story
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inferos_serve import (  # noqa: E402
    MODEL,
    Serve,
    running_serve,
    scheduler_stats,
    set_policy,
    wait_idle,
)
from bench.licence_prompts import Prompts, licence_ids, speculation_tasks  # noqa: E402
from bench.sse_client import BenchError, Side, Stream, generate, percentile  # noqa: E402

CTX = 4096
NOT_INTERLEAVED_MS = 60_000.0  # the policy's maximum: every prefill chunk full size
STARTED_TOKENS = 4  # chunks each decoding stream shows before the long prompt is sent
TIMEOUT = httpx.Timeout(900.0, connect=30.0)
Out = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]   # concurrent streams
    lengths: tuple[int, ...]  # prompt tokens
    max_tokens: int
    decoding: int             # streams decoding while the long prompt is prefilled
    long_prompt: int
    spec_tokens: int
    spec_repeats: int
    quick: bool


FULL = Plan((1, 4, 8), (128, 1024), 128, 4, 2048, 128, 3, False)
QUICK = Plan((1, 2), (128,), 16, 2, 512, 32, 1, True)


# -- the peer, and what else ran ----------------------------------------------------------
@contextlib.contextmanager
def llama_server(threads: int, log_dir: Path, speculative: bool) -> Iterator[Side | str]:
    """llama-server -np 8 as a Side, or why there is none ("not built")."""
    from bench.llama_server_peer import ALIAS, PeerError, PeerSettings, running_peer

    with contextlib.ExitStack() as stack:
        try:
            peer = stack.enter_context(running_peer(PeerSettings(threads=threads),
                                                    speculative=speculative, log_dir=log_dir))
        except PeerError as exc:
            reason = "not built" if "not built" in str(exc) else f"failed to start: {exc}"
        else:
            reason = ""
        yield reason or Side("llama-server", peer.url, ALIAS, "/v1")


class CpuWatch:
    """Cores other processes used since it was made: the machine's busy time minus this
    process tree's (its servers are alive throughout a section)."""

    def __init__(self) -> None:
        self.wall, self.busy, self.tree = time.monotonic(), self._busy_s(), self._tree_s()

    @staticmethod
    def _busy_s() -> float:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait

    @staticmethod
    def _tree_s() -> float:
        me = psutil.Process()
        total = 0.0
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def others(self) -> str:
        wall = time.monotonic() - self.wall
        others = (self._busy_s() - self.busy) - (self._tree_s() - self.tree)
        return f"{max(0.0, others) / wall:.2f}"


# -- 1. streams ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Round:
    streams: list[Stream]
    wall_s: float
    batch: float | None  # ours: mean rows per decode step over the round
    others: str          # cores other processes used meanwhile

    @property
    def aggregate(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall_s

    def cells(self) -> str:
        ttft = [s.ttft * 1000 for s in self.streams]
        tpot = [t * 1000 for s in self.streams if (t := s.tpot) is not None]
        queue = [float(s.timings["queue_ms"]) for s in self.streams if "queue_ms" in s.timings]
        cache = max(int(s.timings.get("cache_n", 0)) for s in self.streams)
        tpots = f"{percentile(tpot, 0.5):8.1f} | {percentile(tpot, 0.95):8.1f}" if tpot \
            else f"{'-':>8} | {'-':>8}"
        return (f"{sum(s.tokens for s in self.streams):6d} | {self.aggregate:9.1f} "
                f"| {percentile(ttft, 0.5):8.0f} | {percentile(ttft, 0.95):8.0f} | {tpots} "
                f"| {f'{statistics.median(queue):.0f}' if queue else '-':>9} "
                f"| {'-' if self.batch is None else f'{self.batch:.2f}':>5} | {cache:5d} "
                f"| {self.others:>6} |")


HEADER = ("| side         | streams | prompt | tokens | agg tok/s | TTFT p50 | TTFT p95 "
          "| TPOT p50 | TPOT p95 | queue p50 | batch | cache | others |")
RULE = "|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:-1]) + "|"


def row(label: str, streams: int, length: int, cells: str) -> str:
    return f"| {label:12} | {streams:7d} | {length:6d} | {cells}"


def mean_rows(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Rows per decode step between two stats: exactly 1 when no step was batched, else
    from the running mean the stats give (3 decimals, so within about 0.01 here)."""
    steps = after["decode_steps"] - before["decode_steps"]
    if not steps:
        return None
    if after["batched_steps"] == before["batched_steps"]:
        return 1.0
    rows = float(after["batch_occupancy"]) * after["decode_steps"] \
        - float(before["batch_occupancy"] or 0.0) * before["decode_steps"]
    return rows / steps


async def one_round(client: httpx.AsyncClient, side: Side, prompts: list[list[int]],
                    max_tokens: int, ours: bool) -> Round:
    before = None
    if ours:
        await wait_idle(client, side)
        before = await scheduler_stats(client, side)
    streams = [Stream() for _ in prompts]
    watch = CpuWatch()
    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for prompt, stream in zip(prompts, streams, strict=True):
            group.create_task(generate(client, side, "completions",
                                       {"prompt": prompt, "max_tokens": max_tokens}, stream))
    wall = max(s.end for s in streams) - began
    batch = None
    if before is not None:
        after = await scheduler_stats(client, side)
        batch = mean_rows(before, after)
    return Round(streams, wall, batch, watch.others())


async def warm_up(client: httpx.AsyncClient, side: Side, prompts: list[list[int]]) -> None:
    """Untimed: the first runs at each batch shape pay the allocators' first touches."""
    await one_round(client, side, prompts[:1], 8, False)
    await one_round(client, side, prompts[1:], 8, False)


# -- 2. interleaving ----------------------------------------------------------------------
@dataclass(frozen=True)
class Prefill:
    gaps_ms: list[float]  # the decoding streams' chunk gaps that overlap the prefill
    ttft_ms: float        # the long prompt's
    chunks: int
    chunk_tokens: int


async def prefill_under_decode(client: httpx.AsyncClient, side: Side, prompts: Prompts,
                               plan: Plan) -> Prefill:
    decoding = [Stream() for _ in range(plan.decoding)]
    long = Stream()
    done = asyncio.Event()
    before: dict[str, Any] = {}

    async def arrive() -> None:
        while min(len(s.stamps) for s in decoding) < STARTED_TOKENS:
            await asyncio.sleep(0.005)
        before.update(await scheduler_stats(client, side))
        try:
            await generate(client, side, "completions",
                           {"prompt": prompts.take(plan.long_prompt), "max_tokens": 2}, long)
        finally:
            done.set()  # the decoding streams go away at their next chunk

    await wait_idle(client, side)
    async with asyncio.TaskGroup() as group:
        for stream in decoding:
            # more tokens than any prefill here lasts: they stop when it is over
            group.create_task(generate(client, side, "completions", {
                "prompt": prompts.take(128), "max_tokens": CTX // 2}, stream, stop=done))
        group.create_task(arrive())
    after = await scheduler_stats(client, side)
    await wait_idle(client, side)
    begin, end = long.sent, long.stamps[0]
    gaps = [(b - a) * 1000 for s in decoding
            for a, b in zip(s.stamps, s.stamps[1:], strict=False) if a < end and b > begin]
    if not gaps:
        raise BenchError("no decode step of the streams overlapped the prefill")
    return Prefill(gaps, long.ttft * 1000, after["prefill_chunks"] - before["prefill_chunks"],
                   after["prefill_chunk_tokens"] - before["prefill_chunk_tokens"])


# -- 3. speculation -----------------------------------------------------------------------
@dataclass(frozen=True)
class Decode:
    tok_s: float
    text: str
    drafted: int
    accepted: int


async def decode_run(client: httpx.AsyncClient, side: Side, prompt: str, plan: Plan
                     ) -> Decode:
    body = {"messages": [{"role": "user", "content": prompt}],
            "max_tokens": plan.spec_tokens}
    s = await generate(client, side, "chat/completions", body)
    return Decode(1.0 / s.tpot if s.tpot else float("nan"), s.text,
                  int(s.timings.get("draft_n", 0)), int(s.timings.get("draft_n_accepted", 0)))


async def decode_runs(client: httpx.AsyncClient, side: Side, prompt: str, plan: Plan
                      ) -> list[Decode]:
    """The peer's runs of one prompt (its speculation is a server flag: one side a server)."""
    body = {"messages": [{"role": "user", "content": prompt}]}
    # untimed first: the measured runs find the prompt in the prefix cache alike
    await generate(client, side, "chat/completions", {**body, "max_tokens": 2})
    return [await decode_run(client, side, prompt, plan) for _ in range(plan.spec_repeats)]


async def plain_and_spec_runs(client: httpx.AsyncClient, serve: Serve, prompt: str,
                              plan: Plan) -> tuple[list[Decode], list[Decode]]:
    """Ours, plain and speculative taking turns run by run, so that drift in the
    machine's speed falls on both alike (one median of 2 once put the story at x0.88)."""
    side = serve.side
    body = {"messages": [{"role": "user", "content": prompt}]}
    await generate(client, side, "chat/completions", {**body, "max_tokens": 2})
    plain: list[Decode] = []
    spec: list[Decode] = []
    for _ in range(plan.spec_repeats):
        for enabled, runs in ((False, plain), (True, spec)):
            await set_policy(client, serve, {"speculation": {"enabled": enabled}})
            runs.append(await decode_run(client, side, prompt, plan))
    return plain, spec


def same_output(a: list[Decode], b: list[Decode]) -> str:
    texts = [d.text for d in a + b]
    other = next((t for t in texts if t != texts[0]), None)
    if other is None:
        return "identical"
    at = next((i for i, (x, y) in enumerate(zip(texts[0], other, strict=False)) if x != y),
              min(len(texts[0]), len(other)))
    return f"differs@{at}"


def rate(runs: list[Decode]) -> float:
    return statistics.median(d.tok_s for d in runs)


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(map(math.log, values)))


def verdict(met: bool) -> str:
    return "met" if met else "not met"


# -- the run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ours:
    budget_ms: float
    rounds: dict[tuple[str, int, int], Round]           # (side, streams, prompt)
    shared: dict[tuple[int, int], list[list[int]]]      # on's prompts, the peer's too
    peer_warm: list[list[int]]
    prefill: dict[str, Prefill]
    spec: dict[str, tuple[list[Decode], list[Decode]]]  # task: (off, on)
    others: tuple[str, str]                             # cores, sections 2 and 3


async def run_ours(plan: Plan, serve: Serve, ids: list[int], out: Out) -> Ours:
    side = serve.side
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        default = await scheduler_stats(client, side)
        budget = float(default["tpot_budget_ms"])
        on = {"scheduler": {"max_batch": default["max_batch"]},
              "speculation": {"enabled": default["speculation"]["enabled"]}}
        off = {"scheduler": {"max_batch": 1}, "speculation": {"enabled": False}}
        prompts = Prompts(ids)
        top = max(plan.levels)
        shared = {(n, length): [prompts.take(length) for _ in range(n)]
                  for length in plan.lengths for n in plan.levels}
        own = {(n, length): [prompts.take(length) for _ in range(n)]
               for length in plan.lengths for n in plan.levels}
        peer_warm = [prompts.take(64) for _ in range(top + 1)]
        await warm_up(client, side, [prompts.take(64) for _ in range(top + 1)])
        rounds: dict[tuple[str, int, int], Round] = {}
        # on and off take turns, round by round, so that drift in the machine's speed
        # falls on both alike
        for length in plan.lengths:
            for n in plan.levels:
                for name, patch, chosen in (("inferos on", on, shared),
                                            ("inferos off", off, own)):
                    await set_policy(client, serve, patch)
                    got = await one_round(client, side, chosen[n, length], plan.max_tokens, True)
                    rounds[name, n, length] = got
                    out(row(name, n, length, got.cells()))
        await set_policy(client, serve, on)
        watch = CpuWatch()

        prefill: dict[str, Prefill] = {}
        for name, ms in (("interleaved", budget), ("not interleaved", NOT_INTERLEAVED_MS)):
            await set_policy(client, serve, {"scheduler": {"tpot_budget_ms": ms}})
            prefill[name] = await prefill_under_decode(client, side, prompts, plan)
        await set_policy(client, serve, {"scheduler": {"tpot_budget_ms": budget}})
        prefill_others, watch = watch.others(), CpuWatch()

        spec: dict[str, tuple[list[Decode], list[Decode]]] = {}
        for task, prompt in speculation_tasks(plan.quick):
            spec[task] = await plain_and_spec_runs(client, serve, prompt, plan)
        await set_policy(client, serve, on)
    return Ours(budget, rounds, shared, peer_warm, prefill, spec,
                (prefill_others, watch.others()))


async def peer_streams(plan: Plan, side: Side, ours: Ours, out: Out
                       ) -> dict[tuple[int, int], Round]:
    """The rounds of ``inferos on``, on its prompts."""
    rounds: dict[tuple[int, int], Round] = {}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        await warm_up(client, side, ours.peer_warm)
        for length in plan.lengths:
            for n in plan.levels:
                rounds[n, length] = got = await one_round(client, side, ours.shared[n, length],
                                                          plan.max_tokens, False)
                out(row("llama-server", n, length, got.cells()))
    return rounds


async def peer_spec(plan: Plan, side: Side) -> dict[str, list[Decode]]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return {task: await decode_runs(client, side, prompt, plan)
                for task, prompt in speculation_tasks(plan.quick)}


# -- the report --------------------------------------------------------------------------
def report_streams(plan: Plan, ours: Ours, peer: dict[tuple[int, int], Round] | str,
                   out: Out) -> None:
    top = max(plan.levels)
    for length in plan.lengths:
        on = ours.rounds["inferos on", top, length]
        ratio = on.aggregate / ours.rounds["inferos off", top, length].aggregate
        out(f"ratio on/off at {top} streams, {length}-token prompts: x{ratio:.2f} "
            f"(target x3: {verdict(ratio >= 3)})")
        head = f"ratio on/llama-server at {top} streams, {length}-token prompts:"
        if isinstance(peer, str):
            out(f"{head} llama-server {peer}")
        else:
            ratio = on.aggregate / peer[top, length].aggregate
            out(f"{head} x{ratio:.2f} (target >= 1: {verdict(ratio >= 1)})")


def report_prefill(plan: Plan, ours: Ours, out: Out) -> None:
    out(f"\n2. A {plan.long_prompt}-token prompt arriving while {plan.decoding} streams "
        "decode: the gaps between their chunks during its prefill, ms")
    out("| prefill         | tpot_budget_ms | chunks | mean chunk | gaps | TPOT p50 "
        "| TPOT p95 | TPOT max | prompt TTFT |")
    out("|-----------------|----------------|--------|------------|------|----------"
        "|----------|----------|-------------|")
    for name, ms in (("interleaved", ours.budget_ms), ("not interleaved", NOT_INTERLEAVED_MS)):
        got = ours.prefill[name]
        mean_chunk = got.chunk_tokens / got.chunks if got.chunks else 0.0
        out(f"| {name:15} | {ms:14.0f} | {got.chunks:6d} | {mean_chunk:10.0f} "
            f"| {len(got.gaps_ms):4d} | {percentile(got.gaps_ms, 0.5):8.1f} "
            f"| {percentile(got.gaps_ms, 0.95):8.1f} | {max(got.gaps_ms):8.1f} "
            f"| {got.ttft_ms:11.0f} |")
    p95 = percentile(ours.prefill["interleaved"].gaps_ms, 0.95)
    out(f"interleaved TPOT p95 {p95:.1f} ms, budget {ours.budget_ms:.0f} ms: "
        f"{verdict(p95 <= ours.budget_ms)}")
    out(f"other processes' CPU use while measuring (cores): {ours.others[0]}")


def report_spec(plan: Plan, ours: Ours, plain: dict[str, list[Decode]] | str,
                spec: dict[str, list[Decode]] | str, peer_others: str, out: Out) -> None:
    out(f"\n3. Speculation, one stream, temperature 0, {plan.spec_tokens} new tokens: "
        f"decode tok/s, median of {plan.spec_repeats}")
    out("| task      | inferos off | inferos on | ratio | accepted/drafted | output       "
        "| llama-server | +ngram-mod | ratio | output       |")
    out("|-----------|-------------|------------|-------|------------------|--------------"
        "|--------------|------------|-------|--------------|")
    ratios: dict[str, float] = {}
    peer_ratios: dict[str, float] = {}
    for task, (off, on) in ours.spec.items():
        ratios[task] = rate(on) / rate(off)
        drafted = f"{sum(d.accepted for d in on)}/{sum(d.drafted for d in on)}"
        if isinstance(plain, str) or isinstance(spec, str):
            why = plain if isinstance(plain, str) else spec
            peer = f"{why:>12} | {'-':>10} | {'-':>5} | {'-':12} |"
        else:
            peer_ratios[task] = rate(spec[task]) / rate(plain[task])
            peer = (f"{rate(plain[task]):12.1f} | {rate(spec[task]):10.1f} "
                    f"| {peer_ratios[task]:5.2f} | {same_output(plain[task], spec[task]):12} |")
        out(f"| {task:9} | {rate(off):11.1f} | {rate(on):10.1f} | {ratios[task]:5.2f} "
            f"| {drafted:>16} | {same_output(off, on):12} | {peer}")
    grounded = [r for task, r in ratios.items() if task != "story"]
    mean = geometric_mean(grounded)
    peer_grounded = [r for task, r in peer_ratios.items() if task != "story"]
    theirs = f"x{geometric_mean(peer_grounded):.2f}" if peer_grounded else \
        (plain if isinstance(plain, str) else spec if isinstance(spec, str) else "?")
    out(f"speculation on/off, grounded tasks (geometric mean): x{mean:.2f} "
        f"(target x1.5: {verdict(mean >= 1.5)}); llama-server ngram-mod {theirs}")
    story = ratios["story"]
    theirs = f"x{peer_ratios['story']:.2f}" if "story" in peer_ratios else theirs
    out(f"speculation on/off, story: x{story:.2f} (target at most 5% slower: "
        f"{verdict(story >= 0.95)}); llama-server ngram-mod {theirs}")
    out(f"other processes' CPU use while measuring (cores): inferos {ours.others[1]}, "
        f"llama-server {peer_others}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="the engine's and llama-server's threads (default 2)")
    parser.add_argument("--max-tokens", type=int, default=FULL.max_tokens,
                        help="new tokens per stream in section 1 (default 128)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 and 2 streams, 128-token prompts, 16 tokens")
    args = parser.parse_args(argv)
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 (TPOT is measured between tokens)")
    plan = QUICK if args.quick else dataclasses.replace(FULL, max_tokens=args.max_tokens)

    def out(line: str) -> None:
        print(line, flush=True)

    from inferos.engine.prepare import ensure_prepared

    folder = ensure_prepared(MODEL, progress=lambda message: None)
    ids = licence_ids(folder)
    started = time.monotonic()
    out(f"model {MODEL}: inferos serve -> embedded engine ({folder.name}), llama-server on "
        f"its GGUF (Q4_1); {args.threads} threads each; context {CTX}; temperature 0; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    out(f"\n1. Streams, {plan.max_tokens} new tokens each, ms; agg tok/s = all streams' "
        "tokens / wall time of the round")
    out(HEADER)
    out(RULE)
    with tempfile.TemporaryDirectory(prefix="engine-throughput-") as work:
        log_dir = Path(work)
        with running_serve(log_dir, threads=args.threads, ctx_size=CTX) as serve:
            ours = asyncio.run(run_ours(plan, serve, ids, out))
        spec_others = "-"  # cores other processes used while llama-server ran section 3
        with llama_server(args.threads, log_dir, speculative=False) as peer:
            if isinstance(peer, str):
                rounds: dict[tuple[int, int], Round] | str = peer
                plain: dict[str, list[Decode]] | str = peer
                for length in plan.lengths:
                    for n in plan.levels:
                        out(row("llama-server", n, length, f"{peer} |"))
            else:
                rounds = asyncio.run(peer_streams(plan, peer, ours, out))
                watch = CpuWatch()
                plain = asyncio.run(peer_spec(plan, peer))
                spec_others = watch.others()
        with llama_server(args.threads, log_dir, speculative=True) as peer:
            watch = CpuWatch()
            spec = peer if isinstance(peer, str) else asyncio.run(peer_spec(plan, peer))
            if not isinstance(peer, str):
                spec_others += f" and {watch.others()} (ngram-mod)"
    out("")
    report_streams(plan, ours, rounds, out)
    report_prefill(plan, ours, out)
    report_spec(plan, ours, plain, spec, spec_others, out)
    out(f"\ndone in {time.monotonic() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
