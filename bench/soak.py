"""Soak (issue 11): ``inferos serve`` on the embedded engine under mixed traffic for N
minutes, the RSS of every process sampled, and whether it stays flat once the budgets
are reached.

    python bench/soak.py                    # 60 minutes (not run in CI)
    python bench/soak.py --minutes 0.5      # a smoke run
    python bench/soak.py --minutes 10 --host-pool-bytes 256MiB   # reach the budget sooner

Traffic, from ``--clients`` concurrent clients through the proxy, drawn with a fixed seed:
chat turns on varied windows of the licence texts in /usr/share/common-licenses (new
conversations and follow-up turns of earlier ones, so the prefix cache both fills and
hits), streaming and not; streams the client drops after a few chunks (a disconnect:
expected); malformed JSON and an unknown model (an OpenAI-shaped 4xx: expected). Anything
else (a 5xx, a timeout, a 4xx on a good request, a stream without ``[DONE]``) is
unexpected. No prompt or completion text is printed or logged.

Every ``--sample-s`` seconds the RSS of ``inferos serve`` and of its engine child (its
pid from the engine's stats) and the engine's ``stats.memory`` are sampled. The budget
counts as reached at the first sample whose parked KV is at least 90% of the engine's
``host_pool_bytes`` (its store is full: from there on it demotes, never grows); the RSS
slope of each process, in MiB per hour, is the least-squares fit over the samples from
then on. If the budget is never reached in the run, the slope is fitted over the last
half of the samples, and the output says which window was used. The batch buffer's pages
also become resident as rows and positions are first used, up to the budget the engine
states, so the engine's RSS may rise after the host pool is full without anything leaking;
the output therefore also fits the slope of the engine's RSS less its batch-buffer pages
and parked KV (what the budget does not account for by part), and counts samples over the
engine's stated budget. Target: 0 unexpected outcomes, that slope near 0, no sample over
the budget.

The last line is ``summary: {json}`` with the same figures, for tools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.inferos_serve import MODEL, Serve, running_serve, set_policy  # noqa: E402
from bench.licence_prompts import LICENCES, TEXTS  # noqa: E402
from bench.slope import least_squares_slope  # noqa: E402
from inferos.controller.setting_types import byte_size  # noqa: E402

MIB = 2**20
BUDGET_REACHED = 0.9  # parked KV at this share of the host pool: the store is full
REQUEST_TIMEOUT_S = 180.0
# What each client does next, and how often (weights).
MIX = (("chat", 30), ("chat_stream", 25), ("follow_up", 20), ("disconnect", 10),
       ("bad_json", 8), ("unknown_model", 7))


@dataclass
class Outcomes:
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)

    def record(self, kind: str, ok: bool, why: str = "") -> None:
        if ok:
            self.expected[kind] += 1
        else:
            self.unexpected[f"{kind}: {why}"] += 1


@dataclass(frozen=True)
class Sample:
    at_s: float
    rss: dict[str, int | None]  # process name -> bytes
    parked: int | None
    host_pool: int | None
    batch_resident: int | None = None  # the batch buffer's resident pages
    budget: int | None = None          # the engine's memory budget (engine/memory_budget.py)


class Traffic:
    """Mixed requests through the proxy; conversations kept for follow-up turns."""

    def __init__(self, serve: Serve, seed: int, max_tokens: int) -> None:
        self.url = serve.side.url + "/api/v1"
        self.rng = random.Random(seed)
        self.words = " ".join((LICENCES / name).read_text(encoding="utf-8")
                              for name in TEXTS).split()
        self.max_tokens = max_tokens
        self.conversations: list[list[dict[str, str]]] = []
        self.outcomes = Outcomes()

    def _passage(self) -> str:
        n = self.rng.randint(40, 260)
        start = self.rng.randrange(0, len(self.words) - n)
        return " ".join(self.words[start:start + n])

    def _body(self, messages: list[dict[str, str]], stream: bool) -> dict[str, Any]:
        return {"model": MODEL, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.rng.choice([0.0, 0.7]), "stream": stream}

    async def one(self, client: httpx.AsyncClient) -> None:
        kinds, weights = zip(*MIX, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        try:
            await getattr(self, "_" + kind)(client, kind)
        except httpx.TimeoutException:
            self.outcomes.record(kind, False, "timeout")
        except httpx.HTTPError as exc:
            self.outcomes.record(kind, False, type(exc).__name__)

    async def _chat(self, client: httpx.AsyncClient, kind: str,
                    messages: list[dict[str, str]] | None = None) -> None:
        messages = messages or [{"role": "user", "content": self._passage()}]
        answer = await client.post(self.url + "/chat/completions",
                                   json=self._body(messages, False))
        if answer.status_code != 200:
            self.outcomes.record(kind, False, str(answer.status_code))
            return
        content = answer.json()["choices"][0]["message"]["content"] or ""
        self._remember(messages + [{"role": "assistant", "content": content}])
        self.outcomes.record(kind, True)

    async def _chat_stream(self, client: httpx.AsyncClient, kind: str) -> None:
        messages = [{"role": "user", "content": self._passage()}]
        async with client.stream("POST", self.url + "/chat/completions",
                                 json=self._body(messages, True)) as answer:
            if answer.status_code != 200:
                await answer.aread()
                self.outcomes.record(kind, False, str(answer.status_code))
                return
            text = b"".join([chunk async for chunk in answer.aiter_raw()])
        self.outcomes.record(kind, b"data: [DONE]" in text, "no [DONE]")

    async def _follow_up(self, client: httpx.AsyncClient, kind: str) -> None:
        if not self.conversations:
            await self._chat(client, kind)
            return
        history = self.rng.choice(self.conversations)
        await self._chat(client, kind, history + [{"role": "user",
                                                   "content": self._passage()}])

    async def _disconnect(self, client: httpx.AsyncClient, kind: str) -> None:
        messages = [{"role": "user", "content": self._passage()}]
        body = {**self._body(messages, True), "max_tokens": 256}
        async with client.stream("POST", self.url + "/chat/completions",
                                 json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                self.outcomes.record(kind, False, str(answer.status_code))
                return
            chunks = 0
            async for _ in answer.aiter_raw():
                chunks += 1
                if chunks >= 3:
                    break  # leaving the block closes the connection mid-stream
        self.outcomes.record(kind, True)

    async def _bad_json(self, client: httpx.AsyncClient, kind: str) -> None:
        answer = await client.post(self.url + "/chat/completions",
                                   content=b'{"model": "' + MODEL.encode() + b'", "messages": [',
                                   headers={"Content-Type": "application/json"})
        self._expect_error(kind, answer, 400)

    async def _unknown_model(self, client: httpx.AsyncClient, kind: str) -> None:
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4}
        answer = await client.post(self.url + "/chat/completions", json=body)
        self._expect_error(kind, answer, 404)

    def _expect_error(self, kind: str, answer: httpx.Response, status: int) -> None:
        try:
            shaped = isinstance(answer.json().get("error"), dict)
        except ValueError:
            shaped = False
        self.outcomes.record(kind, answer.status_code == status and shaped,
                             f"{answer.status_code}{'' if shaped else ' not OpenAI-shaped'}")

    def _remember(self, history: list[dict[str, str]]) -> None:
        if len(history) > 7:  # long enough: start another conversation instead
            return
        self.conversations.append(history)
        if len(self.conversations) > 64:
            self.conversations.pop(self.rng.randrange(len(self.conversations)))


async def _client_loop(traffic: Traffic, client: httpx.AsyncClient, deadline: float) -> None:
    while time.monotonic() < deadline:
        await traffic.one(client)


def _rss(process: psutil.Process | None) -> int | None:
    try:
        return int(process.memory_info().rss) if process is not None else None
    except psutil.Error:
        return None


async def _sampler(serve: Serve, client: httpx.AsyncClient, started: float, deadline: float,
                   every_s: float, samples: list[Sample]) -> None:
    processes: dict[str, psutil.Process | None] = {"serve": None, "engine": None}
    while True:
        try:
            stats = (await client.get(serve.side.url + "/api/v1/stats")).json()
        except (httpx.HTTPError, ValueError):
            stats = {}
        memory = stats.get("memory") or {}
        pid = (stats.get("engine") or {}).get("pid")
        if isinstance(pid, int) and (processes["engine"] is None
                                     or processes["engine"].pid != pid):
            with_engine = psutil.Process(pid)
            processes = {"serve": with_engine.parent(), "engine": with_engine}
        samples.append(Sample(time.monotonic() - started,
                              {name: _rss(p) for name, p in processes.items()},
                              memory.get("parked_kv_bytes"), memory.get("host_pool_bytes"),
                              memory.get("batch_buffer_resident_bytes"),
                              memory.get("budget_bytes")))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))


def _slope_mib_per_hour(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of (seconds, bytes), in MiB per hour; None under 3 points."""
    slope = least_squares_slope(points)
    return None if slope is None else slope * 3600 / MIB


def summarize(samples: list[Sample], outcomes: Outcomes, minutes: float) -> dict[str, Any]:
    reached = next((s.at_s for s in samples if s.parked is not None and s.host_pool
                    and s.parked >= BUDGET_REACHED * s.host_pool), None)
    if reached is not None and sum(s.at_s >= reached for s in samples) >= 3:
        window, tail = "after the budget was reached", [s for s in samples if s.at_s >= reached]
    else:
        window, tail = "last half (budget not reached)", samples[len(samples) // 2:]
    processes: dict[str, Any] = {}
    for name in ("serve", "engine"):
        series, fitted = _rss_series(samples, name), _rss_series(tail, name)
        processes[name] = {
            "start_mib": round(series[0][1] / MIB, 1) if series else None,
            "end_mib": round(series[-1][1] / MIB, 1) if series else None,
            "max_mib": round(max(b for _, b in series) / MIB, 1) if series else None,
            "slope_mib_per_hour": _round(_slope_mib_per_hour(fitted)),
        }
    # The engine's RSS less the two parts of its budget that grow by design (the batch
    # buffer's pages, touched as rows and positions are first used, and the parked KV up to
    # the host pool): what is left must stay flat, or something the budget does not know
    # of grows.
    rest = [(s.at_s, rss - s.batch_resident - s.parked) for s in tail
            if (rss := s.rss.get("engine")) is not None and s.batch_resident is not None
            and s.parked is not None]
    over = [s.at_s for s in samples if (rss := s.rss.get("engine")) is not None
            and s.budget is not None and rss > s.budget]
    processes["engine"]["unbudgeted_slope_mib_per_hour"] = _round(_slope_mib_per_hour(rest))
    processes["engine"]["over_budget_samples"] = len(over)
    last = samples[-1] if samples else None
    return {
        "minutes": minutes, "samples": len(samples),
        "requests": sum(outcomes.expected.values()) + sum(outcomes.unexpected.values()),
        "expected": dict(outcomes.expected), "unexpected": dict(outcomes.unexpected),
        "unexpected_total": sum(outcomes.unexpected.values()),
        "budget_reached_s": None if reached is None else round(reached, 1),
        "slope_window": window, "processes": processes,
        "parked_kv_mib": None if last is None or last.parked is None
        else round(last.parked / MIB, 1),
        "host_pool_mib": None if last is None or last.host_pool is None
        else round(last.host_pool / MIB, 1),
    }


def _rss_series(samples: list[Sample], name: str) -> list[tuple[float, int]]:
    """(seconds, RSS bytes) of one process, the samples that measured it."""
    points: list[tuple[float, int]] = []
    for sample in samples:
        rss = sample.rss.get(name)
        if rss is not None:
            points.append((sample.at_s, rss))
    return points


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def report(summary: dict[str, Any]) -> str:
    lines = [f"soak: {summary['minutes']} min, {summary['requests']} requests, "
             f"{summary['samples']} RSS samples",
             "expected outcomes: " + (", ".join(f"{k} {v}" for k, v in
                                                sorted(summary["expected"].items())) or "none"),
             f"unexpected outcomes: {summary['unexpected_total']}"
             + "".join(f"\n  {k}: {v}" for k, v in sorted(summary["unexpected"].items())),
             f"parked KV {summary['parked_kv_mib']} MiB of host pool "
             f"{summary['host_pool_mib']} MiB; budget reached at "
             f"{summary['budget_reached_s']} s",
             f"RSS slope window: {summary['slope_window']}"]
    for name, p in summary["processes"].items():
        lines.append(f"  {name:<7} RSS start {p['start_mib']} MiB, end {p['end_mib']} MiB, "
                     f"max {p['max_mib']} MiB, slope {p['slope_mib_per_hour']} MiB/h")
    engine = summary["processes"]["engine"]
    lines.append(f"  engine RSS less batch-buffer pages and parked KV: slope "
                 f"{engine['unbudgeted_slope_mib_per_hour']} MiB/h; samples over the "
                 f"engine's budget: {engine['over_budget_samples']}")
    lines.append("summary: " + json.dumps(summary, sort_keys=True))
    return "\n".join(lines)


async def soak(args: argparse.Namespace, serve: Serve) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        if args.host_pool_bytes is not None:
            await set_policy(client, serve, {"io": {"host_pool_bytes": args.host_pool_bytes}})
        traffic = Traffic(serve, args.seed, args.max_tokens)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        samples: list[Sample] = []
        async with asyncio.TaskGroup() as group:
            group.create_task(_sampler(serve, client, started, deadline, args.sample_s,
                                       samples), name="soak-sampler")
            for i in range(args.clients):
                group.create_task(_client_loop(traffic, client, deadline),
                                  name=f"soak-client-{i}")
        return summarize(samples, traffic.outcomes, args.minutes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--host-pool-bytes", type=byte_size, default=None,
                        help="set io.host_pool_bytes live first (default: the engine's, "
                             "sized from this machine)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inferos-soak-") as tmp, \
            running_serve(Path(tmp), threads=args.threads, ctx_size=args.ctx_size) as serve:
        summary = asyncio.run(soak(args, serve))
    print(report(summary), flush=True)
    return 0 if summary["unexpected_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
