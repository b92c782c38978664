"""The A/B run's workloads (bench/ab.py), each a list of cells; a cell is what one side is
measured on once, as a client sees it (bench/sse_client.py: streamed, temperature 0, the
server's own token counts).

  grid      the seed's load grid: ``batch`` concurrent streams of ``L``-token prompts of
            licence text (/usr/share/common-licenses) to ``completions``, sent together
  chat      a multi-turn chat to ``chat/completions``: each turn adds a passage and a
            question to the history the client keeps (its own answers included); FTL per
            turn, where reusing the earlier turns' KV shows
  grounded  tasks grounded in their input (edit, summarize), one stream, where
            prompt-lookup speculation has something to find
  mixed     streams arriving one after another while the earlier ones decode

Prompts are text, so that any OpenAI-shaped backend takes them; they are windows of the
licences' tokens (bench/licence_prompts.py: each starts with a token no other starts with,
so no prefix cache serves one from another), decoded. A stream that fails counts as an
error of its cell and the cell goes on.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from bench.licence_prompts import Prompts, excerpt, speculation_tasks
from bench.sse_client import BenchError, Side, Stream, generate, percentile

# Sent with every request, so that every side samples alike where a request samples; at
# temperature 0 (every request here) the output is the weights' alone.
SEED = 1234

__all__ = ["FULL", "QUICK", "Cell", "Plan", "RunFigures", "build_cells", "chat_turn", "measure"]


@dataclass(frozen=True)
class Plan:
    lengths: tuple[int, ...]   # grid: prompt tokens
    batches: tuple[int, ...]   # grid: concurrent streams
    max_tokens: int            # grid and mixed: new tokens per stream
    repeats: int
    chat_turns: int
    chat_tokens: int
    grounded: tuple[str, ...]
    grounded_tokens: int
    mixed_streams: int
    mixed_gap_s: float
    mixed_prompt: int
    fallback_s: float          # the fallback phase's length
    profiles: tuple[str, ...]
    quick: bool


FULL = Plan(lengths=(128, 512, 1024, 2048), batches=(1, 4, 8), max_tokens=32, repeats=3,
            chat_turns=4, chat_tokens=32, grounded=("edit", "summarize"), grounded_tokens=64,
            mixed_streams=6, mixed_gap_s=0.5, mixed_prompt=512, fallback_s=12.0,
            profiles=("safe", "balanced", "aggressive"), quick=False)
QUICK = Plan(lengths=(128, 512), batches=(1, 2), max_tokens=8, repeats=1, chat_turns=2,
             chat_tokens=8, grounded=("edit",), grounded_tokens=16, mixed_streams=3,
             mixed_gap_s=0.3, mixed_prompt=128, fallback_s=4.0, profiles=("balanced",),
             quick=True)


@dataclass(frozen=True)
class RunFigures:
    """One cell, one side, one run. Times in ms; None where nothing was measured."""

    tps: float | None          # all streams' tokens / wall time, first send to last token
    stream_tps: float | None   # median over streams of 1 / TPOT (decode speed)
    ftl_p50_ms: float | None   # time to first token, sending included
    ftl_p95_ms: float | None
    e2e_p95_ms: float | None   # sending to the last token
    tokens: int
    prompt_tokens: int | None  # the server's count, median over streams
    streams: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figures(streams: list[Stream | BaseException], began: float) -> RunFigures:
    good = [s for s in streams if isinstance(s, Stream) and s.stamps]
    errors = len(streams) - len(good)
    if not good:
        return RunFigures(None, None, None, None, None, 0, None, len(streams), errors)
    ftl = [s.ttft * 1000 for s in good]
    e2e = [(s.end - s.sent) * 1000 for s in good]
    rates = [1.0 / t for s in good if (t := s.tpot)]
    prompts = [s.prompt_tokens for s in good if s.prompt_tokens is not None]
    wall = max(s.end for s in good) - began
    tokens = sum(s.tokens for s in good)
    return RunFigures(
        tps=tokens / wall if wall > 0 else None,
        stream_tps=statistics.median(rates) if rates else None,
        ftl_p50_ms=percentile(ftl, 0.5), ftl_p95_ms=percentile(ftl, 0.95),
        e2e_p95_ms=percentile(e2e, 0.95), tokens=tokens,
        prompt_tokens=int(statistics.median(prompts)) if prompts else None,
        streams=len(streams), errors=errors)


async def _one(client: httpx.AsyncClient, side: Side, route: str, body: dict[str, Any],
               delay_s: float = 0.0) -> Stream:
    if delay_s:
        await asyncio.sleep(delay_s)
    return await generate(client, side, route, body)


async def _together(client: httpx.AsyncClient, side: Side, bodies: list[dict[str, Any]],
                    route: str = "completions", gap_s: float = 0.0) -> RunFigures:
    began = time.perf_counter()
    got = await asyncio.gather(*(_one(client, side, route, body, i * gap_s)
                                 for i, body in enumerate(bodies)), return_exceptions=True)
    for item in got:
        if isinstance(item, BaseException) and not isinstance(item, BenchError | httpx.HTTPError):
            raise item  # a defect of the run itself, not an error of the side
    return _figures(list(got), began)


@dataclass(frozen=True)
class Cell:
    """One cell of a workload: ``key`` names it in results.json (``grid/L512/B4``)."""

    workload: str
    key: str
    params: dict[str, Any]
    bodies: tuple[dict[str, Any], ...]  # grid, grounded, mixed: what is sent
    route: str = "completions"
    gap_s: float = 0.0
    chat: tuple[str, ...] = ()          # chat: the user turns, in order
    max_tokens: int = 0


async def measure(client: httpx.AsyncClient, side: Side, cell: Cell) -> RunFigures:
    """Runs ``cell`` (not a chat: see ``chat_turn``) once on ``side``."""
    return await _together(client, side, list(cell.bodies), cell.route, cell.gap_s)


async def chat_turn(client: httpx.AsyncClient, side: Side, history: list[dict[str, str]],
                    question: str, max_tokens: int) -> RunFigures:
    """One turn of a chat: ``question`` joins ``history``, and so does the answer (the
    client keeps its own answers, as a chat client does; empty where the turn failed)."""
    history.append({"role": "user", "content": question})
    began = time.perf_counter()
    try:
        stream: Stream | BaseException = await generate(
            client, side, "chat/completions", {"messages": list(history),
                                               "max_tokens": max_tokens, "seed": SEED})
    except (BenchError, httpx.HTTPError) as exc:
        stream = exc
    history.append({"role": "assistant",
                    "content": stream.text if isinstance(stream, Stream) else ""})
    return _figures([stream], began)


CHAT_PASSAGES = (("GPL-3", "The licenses for most software"),
                 ("Apache-2.0", "2. Grant of Copyright License"),
                 ("MPL-2.0", "1.1. \"Contributor\""),
                 ("LGPL-2.1", "This license, the Lesser General Public License"),
                 ("GFDL-1.3", "The purpose of this License"),
                 ("GPL-2", "The precise terms and conditions"))


def build_cells(plan: Plan, prompts: Prompts, decode: Callable[[list[int]], str]
                ) -> list[Cell]:
    """Every cell of the run, each with its prompts fixed: every side and every repeat
    sends exactly these."""
    cells: list[Cell] = []
    for length in plan.lengths:
        for batch in plan.batches:
            bodies = tuple({"prompt": decode(prompts.take(length)),
                            "max_tokens": plan.max_tokens, "seed": SEED} for _ in range(batch))
            cells.append(Cell("grid", f"grid/L{length}/B{batch}",
                              {"L": length, "batch": batch}, bodies))
    turns = tuple(f"Here is part {i + 1} of a licence:\n\n{excerpt(name, marker, 600)}\n\n"
                  "In one sentence, what does this part say?"
                  for i, (name, marker) in enumerate(CHAT_PASSAGES[:plan.chat_turns]))
    cells.append(Cell("chat", "chat", {"turns": plan.chat_turns}, (), chat=turns,
                      max_tokens=plan.chat_tokens))
    tasks = dict(speculation_tasks(quick=False))
    for task in plan.grounded:
        body = {"messages": [{"role": "user", "content": tasks[task]}],
                "max_tokens": plan.grounded_tokens, "seed": SEED}
        cells.append(Cell("grounded", f"grounded/{task}", {"task": task}, (body,),
                          route="chat/completions"))
    bodies = tuple({"prompt": decode(prompts.take(plan.mixed_prompt)),
                    "max_tokens": plan.max_tokens, "seed": SEED}
                   for _ in range(plan.mixed_streams))
    cells.append(Cell("mixed", "mixed", {"streams": plan.mixed_streams,
                                         "gap_s": plan.mixed_gap_s, "L": plan.mixed_prompt},
                      bodies, gap_s=plan.mixed_gap_s))
    return cells

