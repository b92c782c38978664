"""The A/B run's fallback criterion (bench/ab.py): a controller fault injected mid-run, the
time until the proxy passes requests through, and the requests that failed meanwhile.

On a fresh ``inferos serve`` (the default profile) a client keeps two kinds of traffic
going: ``GET /api/v1/models`` back to back (fine-grained: a few milliseconds apart) and
streamed generations back to back (the requests a fault must not break). A third of the
way in, SIGUSR1 makes the controller raise in its next tick (INFEROS_FAULT_SIGNAL=1,
controller.Controller.inject_fault), as a defect would.

- ``to_passthrough_ms``: from the signal to the sending of the first request that came
  back in passthrough (no ``X-Request-Id``, which the proxy adds only while it observes);
  an upper bound, since the switch happened at the latest when that request arrived.
- ``health_passthrough_ms``: from the signal to the first ``GET /v1/health`` (polled every
  10 ms) that says ``passthrough``.
- ``recovered_ms``: until requests were observed again (the fail-safe ends passthrough once
  the controller has been healthy for ``recover_after_s``), or None within the phase.
- ``failed``: requests of either kind that did not answer 200 in full, over the whole phase.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from bench.ab_sides import Running
from bench.sse_client import BenchError, generate

__all__ = ["Fallback", "fallback_phase"]

REQUEST_ID = "x-request-id"
TARGET_MS = 1000.0


@dataclass(frozen=True)
class Fallback:
    to_passthrough_ms: float | None
    health_passthrough_ms: float | None
    recovered_ms: float | None
    requests: int
    generations: int
    failed: int
    target_ms: float = TARGET_MS

    @property
    def met(self) -> bool:
        return (self.to_passthrough_ms is not None and self.to_passthrough_ms <= self.target_ms
                and self.failed == 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass
class _Log:
    sent: list[tuple[float, bool]]  # (sent at, observed) of each light request that answered
    failed: int = 0
    requests: int = 0
    generations: int = 0
    health_at: float | None = None


async def _light(client: httpx.AsyncClient, running: Running, log: _Log, until: float) -> None:
    url = f"{running.side.url}{running.side.prefix}/models"
    while time.monotonic() < until:
        sent = time.monotonic()
        log.requests += 1
        try:
            answer = await client.get(url)
            answer.raise_for_status()
        except httpx.HTTPError:
            log.failed += 1
            continue
        log.sent.append((sent, REQUEST_ID in answer.headers))


async def _generations(client: httpx.AsyncClient, running: Running, log: _Log,
                       until: float) -> None:
    body = {"prompt": "The licence grants each user the right to", "max_tokens": 8}
    while time.monotonic() < until:
        log.generations += 1
        try:
            await generate(client, running.side, "completions", body)
        except (BenchError, httpx.HTTPError):
            log.failed += 1


async def _health(client: httpx.AsyncClient, running: Running, log: _Log, after: float,
                  until: float) -> None:
    assert running.admin is not None
    while time.monotonic() < until and log.health_at is None:
        now = time.monotonic()
        if now >= after:
            status = (await client.get(running.admin + "/v1/health")).json().get("status")
            if status == "passthrough":
                log.health_at = time.monotonic()
        await asyncio.sleep(0.01)


async def fallback_phase(running: Running, length_s: float) -> Fallback:
    log = _Log(sent=[])
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        start = time.monotonic()
        until = start + length_s
        fault_at = start + length_s / 3

        sent_at: list[float] = []

        async def inject() -> None:
            await asyncio.sleep(max(0.0, fault_at - time.monotonic()))
            sent_at.append(time.monotonic())  # the signal's own time: the sleep may run late
            running.inject_fault()

        await asyncio.gather(_light(client, running, log, until),
                             _generations(client, running, log, until),
                             _health(client, running, log, fault_at, until), inject())
    fault_at = sent_at[0]
    after = [(sent, observed) for sent, observed in log.sent if sent >= fault_at]
    first_pass = next((sent for sent, observed in after if not observed), None)
    recovered = next((sent for sent, observed in after
                      if observed and first_pass is not None and sent > first_pass), None)

    def since(at: float | None) -> float | None:
        return None if at is None else round((at - fault_at) * 1000, 1)

    return Fallback(since(first_pass), since(log.health_at), since(recovered), log.requests,
                    log.generations, log.failed)
