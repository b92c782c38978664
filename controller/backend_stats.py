"""The backend's own live state (KV-cache levels, prefix-cache hits, its scheduler), read
from its ``/api/v1/stats`` and exposed at scrape time by a custom Prometheus collector.

The embedded engine reports ``kv_levels: {"L0": {"tokens", "bytes"}, ... "L3": ...}``,
``prefix_cache: {"hits", "misses"}`` and ``scheduler: {"queue_depth", "queue_wait_ms_p50",
"batch_occupancy", "max_batch", "prefill_chunks", "prefill_chunk_tokens", "speculation":
{"drafted", "accepted", "accept_rate", "sequences_stopped", "enabled"}, "placement":
{"fell_back", "reason", "prefill_provider", "decode_provider"}}`` (counts since the engine
started), and ``memory: {"rss_bytes", "start_rss_bytes", "weights_bytes",
"batch_buffer_bytes", "batch_buffer_resident_bytes", "parked_kv_bytes", "host_pool_bytes",
"budget_bytes", ...}`` (engine/memory_budget.py: what the engine holds and the budget it
adds up to; a figure its machine cannot measure is null). Lemonade and llama.cpp report
none of them, so these series are simply absent for them (and ``/v1/metrics`` shows null),
never invented. Every field is read defensively: one missing or of the wrong type is None,
the rest still counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferos.kvstore.levels import Level  # the one table of KV levels

LEVELS = tuple(level.name for level in Level)
STATS_PATH = "/api/v1/stats"
SYSTEM_INFO_PATH = "/api/v1/system-info"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    """A counter: a whole number, never negative."""
    number = _int(value)
    return number if number is not None and number >= 0 else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the engine runs prefill and decode, and whether that is not what was asked."""

    fell_back: bool
    reason: str | None
    prefill_provider: str | None
    decode_provider: str | None

    @classmethod
    def parse(cls, body: Any) -> Placement | None:
        if not isinstance(body, dict) or not isinstance(body.get("fell_back"), bool):
            return None
        return cls(body["fell_back"], _text(body.get("reason")),
                   _text(body.get("prefill_provider")), _text(body.get("decode_provider")))

    def as_dict(self) -> dict[str, Any]:
        return {"fell_back": self.fell_back, "reason": self.reason,
                "prefill_provider": self.prefill_provider,
                "decode_provider": self.decode_provider}


@dataclass(frozen=True, slots=True)
class Speculation:
    """The engine's prompt-lookup speculation: tokens drafted and accepted since it started."""

    drafted: int | None = None
    accepted: int | None = None
    reported_rate: float | None = None  # the engine's own ``accept_rate``
    sequences_stopped: int | None = None  # turned off by quality.min_accept_rate
    enabled: bool | None = None

    @classmethod
    def parse(cls, body: Any) -> Speculation | None:
        if not isinstance(body, dict):
            return None
        enabled = body.get("enabled")
        return cls(_count(body.get("drafted")), _count(body.get("accepted")),
                   _number(body.get("accept_rate")), _count(body.get("sequences_stopped")),
                   enabled if isinstance(enabled, bool) else None)

    @property
    def accept_rate(self) -> float | None:
        """accepted / drafted, from the counts when both are there (the engine rounds its
        own), else its reported rate; None when nothing was drafted, and when the figures
        cannot be a share (more accepted than drafted)."""
        if self.drafted is not None and self.accepted is not None:
            if self.drafted == 0 or self.accepted > self.drafted:
                return None
            return self.accepted / self.drafted
        rate = self.reported_rate
        return rate if rate is not None and 0.0 <= rate <= 1.0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"drafted": self.drafted, "accepted": self.accepted,
                "accept_rate": self.accept_rate, "sequences_stopped": self.sequences_stopped,
                "enabled": self.enabled}


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """The engine's batching scheduler as it reports itself (None: not reported)."""

    queue_depth: int | None = None
    queue_wait_ms_p50: float | None = None
    batch_occupancy: float | None = None  # rows per decode step, mean since start
    max_batch: int | None = None
    placement: Placement | None = None
    prefill_chunks: int | None = None
    prefill_chunk_tokens: int | None = None
    speculation: Speculation | None = None  # None: the engine reported no speculation

    @classmethod
    def parse(cls, body: Any) -> SchedulerStats | None:
        if not isinstance(body, dict):
            return None
        return cls(_int(body.get("queue_depth")), _number(body.get("queue_wait_ms_p50")),
                   _number(body.get("batch_occupancy")), _int(body.get("max_batch")),
                   Placement.parse(body.get("placement")), _count(body.get("prefill_chunks")),
                   _count(body.get("prefill_chunk_tokens")),
                   Speculation.parse(body.get("speculation")))

    def as_dict(self) -> dict[str, Any]:
        return {"queue_depth": self.queue_depth, "queue_wait_ms_p50": self.queue_wait_ms_p50,
                "batch_occupancy": self.batch_occupancy, "max_batch": self.max_batch,
                "prefill_chunks": self.prefill_chunks,
                "prefill_chunk_tokens": self.prefill_chunk_tokens,
                "speculation": self.speculation.as_dict() if self.speculation else None,
                "placement": self.placement.as_dict() if self.placement else None}


MEMORY_KINDS = (  # the engine's ``memory`` fields each exported as one kind of bytes
    ("rss", "rss_bytes"),
    ("start_rss", "start_rss_bytes"),
    ("weights", "weights_bytes"),
    ("batch_buffer_allocated", "batch_buffer_bytes"),
    ("batch_buffer_resident", "batch_buffer_resident_bytes"),
    ("parked_kv", "parked_kv_bytes"),
)


@dataclass(frozen=True, slots=True)
class EngineMemory:
    """The engine's memory as it reports it: bytes by kind, its budget, its host pool
    (None: not reported, or not measurable on its machine)."""

    kinds: dict[str, int | None] = field(default_factory=dict)
    budget_bytes: int | None = None
    host_pool_bytes: int | None = None

    @classmethod
    def parse(cls, body: Any) -> EngineMemory | None:
        if not isinstance(body, dict):
            return None
        return cls({kind: _count(body.get(name)) for kind, name in MEMORY_KINDS},
                   _count(body.get("budget_bytes")), _count(body.get("host_pool_bytes")))

    def as_dict(self) -> dict[str, Any]:
        return {**{f"{kind}_bytes": self.kinds.get(kind) for kind, _ in MEMORY_KINDS},
                "budget_bytes": self.budget_bytes, "host_pool_bytes": self.host_pool_bytes}


@dataclass(frozen=True, slots=True)
class BackendStats:
    kv_tokens: dict[str, int] = field(default_factory=dict)
    kv_bytes: dict[str, int] = field(default_factory=dict)
    prefix_hits: int | None = None
    prefix_misses: int | None = None
    # The engine's own estimate of the quality cost of the KV it holds (per-level
    # calibration of its model, weighted by tokens held), and its quality guard's count.
    delta_ppl_est: float | None = None
    guard_promotions: int | None = None
    scheduler: SchedulerStats | None = None  # None: the backend has no such scheduler
    memory: EngineMemory | None = None  # None: the backend reports no memory of its own

    @classmethod
    def parse(cls, body: Any) -> BackendStats:
        if not isinstance(body, dict):
            return cls()
        tokens: dict[str, int] = {}
        sizes: dict[str, int] = {}
        levels = body.get("kv_levels")
        if isinstance(levels, dict):
            for level in LEVELS:
                entry = levels.get(level)
                if isinstance(entry, dict):
                    if isinstance(entry.get("tokens"), int):
                        tokens[level] = entry["tokens"]
                    if isinstance(entry.get("bytes"), int):
                        sizes[level] = entry["bytes"]
        prefix = body.get("prefix_cache")
        hits = misses = None
        if isinstance(prefix, dict):
            hits = prefix.get("hits") if isinstance(prefix.get("hits"), int) else None
            misses = prefix.get("misses") if isinstance(prefix.get("misses"), int) else None
        estimate = promotions = None
        quality = body.get("quality")
        if isinstance(quality, dict):
            value = quality.get("delta_ppl_est")
            if isinstance(value, int | float) and not isinstance(value, bool):
                estimate = float(value)
            guard = quality.get("guard")
            if isinstance(guard, dict) and isinstance(guard.get("promotions"), int):
                promotions = guard["promotions"]
        return cls(tokens, sizes, hits, misses, estimate, promotions,
                   SchedulerStats.parse(body.get("scheduler")),
                   EngineMemory.parse(body.get("memory")))


class BackendStatsCollector(Collector):
    """Reads ``latest`` at scrape time; the controller replaces it, never mutates it."""

    def __init__(self) -> None:
        self.latest = BackendStats()

    def collect(self) -> Iterator[Metric]:
        stats = self.latest
        if stats.kv_tokens:
            tokens = GaugeMetricFamily("inferos_kv_level_tokens",
                                       "KV-cache tokens held at each level "
                                       "(L0 full precision, L1 int8, L2 int4, L3 evicted)",
                                       labels=["level"])
            for level, value in stats.kv_tokens.items():
                tokens.add_metric([level], value)
            yield tokens
        if stats.kv_bytes:
            sizes = GaugeMetricFamily("inferos_kv_level_bytes",
                                      "KV-cache bytes held at each level, metadata included",
                                      labels=["level"])
            for level, value in stats.kv_bytes.items():
                sizes.add_metric([level], value)
            yield sizes
        if stats.prefix_hits is not None:
            yield CounterMetricFamily("inferos_prefix_cache_hits",
                                      "Prompts whose prefix KV was reused", stats.prefix_hits)
        if stats.prefix_misses is not None:
            yield CounterMetricFamily("inferos_prefix_cache_misses",
                                      "Prompts with no reusable prefix KV", stats.prefix_misses)
        if stats.delta_ppl_est is not None:
            yield GaugeMetricFamily("inferos_quality_delta_ppl_estimate",
                                    "Estimated perplexity increase of the KV the backend "
                                    "holds (measured per-level calibration)",
                                    stats.delta_ppl_est)
        if stats.scheduler is not None:
            yield from _scheduler_series(stats.scheduler)
        if stats.memory is not None:
            yield from _memory_series(stats.memory)


def _memory_series(memory: EngineMemory) -> Iterator[Metric]:
    """The engine's memory by kind and its budget; a kind it could not measure is absent."""
    held = GaugeMetricFamily("inferos_engine_memory_bytes",
                             "The embedded engine's memory by kind: process RSS, RSS at "
                             "model load, weight files, batch KV buffer allocated and "
                             "resident, parked prefix-cache KV", labels=["kind"])
    for kind, value in memory.kinds.items():
        if value is not None:
            held.add_metric([kind], value)
    if held.samples:
        yield held
    if memory.budget_bytes is not None:
        yield GaugeMetricFamily("inferos_engine_memory_budget_bytes",
                                "The embedded engine's memory budget: RSS at model load + "
                                "every batch row it may touch + the host pool",
                                memory.budget_bytes)
    if memory.host_pool_bytes is not None:
        yield GaugeMetricFamily("inferos_engine_host_pool_bytes",
                                "Bytes the engine's parked KV may hold (io.host_pool_bytes)",
                                memory.host_pool_bytes)


def _scheduler_series(scheduler: SchedulerStats) -> Iterator[Metric]:
    """The engine's scheduler and speculation; a figure it did not report is absent."""
    gauges: list[tuple[str, str, float | None]] = [
        ("inferos_scheduler_max_batch", "Sequences the engine decodes together at most",
         scheduler.max_batch),
        ("inferos_scheduler_batch_occupancy",
         "Sequences per decode step, mean since the engine started (at most max_batch)",
         scheduler.batch_occupancy),
        ("inferos_scheduler_queue_depth", "Requests waiting for a batch row",
         scheduler.queue_depth),
        ("inferos_scheduler_queue_wait_p50_seconds",
         "Median wait for a batch row over the engine's recent requests",
         None if scheduler.queue_wait_ms_p50 is None else scheduler.queue_wait_ms_p50 / 1000),
    ]
    counters: list[tuple[str, str, int | None]] = [
        ("inferos_scheduler_prefill_chunks",
         "Prompt chunks prefilled between batched decode steps", scheduler.prefill_chunks),
        ("inferos_scheduler_prefill_chunk_tokens", "Prompt tokens prefilled in those chunks",
         scheduler.prefill_chunk_tokens),
    ]
    spec = scheduler.speculation
    if spec is not None:
        counters += [
            ("inferos_spec_drafted_tokens", "Tokens drafted by prompt-lookup speculation",
             spec.drafted),
            ("inferos_spec_accepted_tokens", "Drafted tokens the model's own choice accepted",
             spec.accepted),
            ("inferos_spec_sequences_stopped",
             "Sequences whose speculation stopped: acceptance below quality.min_accept_rate",
             spec.sequences_stopped),
        ]
        gauges.append(("inferos_spec_accept_ratio",
                       "Drafted tokens accepted, as a share, since the engine started "
                       "(absent while nothing was drafted)", spec.accept_rate))
    for name, documentation, value in gauges:
        if value is not None:
            yield GaugeMetricFamily(name, documentation, value)
    for name, documentation, count in counters:
        if count is not None:
            yield CounterMetricFamily(name, documentation, count)


async def fetch(client: httpx.AsyncClient, upstream: str) -> BackendStats:
    try:
        response = await client.get(upstream + STATS_PATH, timeout=2.0)
        return BackendStats.parse(response.json() if response.status_code == 200 else None)
    except (httpx.HTTPError, ValueError):
        return BackendStats()


async def fetch_providers(client: httpx.AsyncClient, upstream: str) -> tuple[str, ...] | None:
    """The onnxruntime providers the engine's ``/api/v1/system-info`` lists (what its
    scheduler can place on); None when it lists none or cannot be read."""
    try:
        response = await client.get(upstream + SYSTEM_INFO_PATH, timeout=2.0)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    providers = body.get("execution_providers") if isinstance(body, dict) else None
    if not isinstance(providers, list):
        return None
    return tuple(p for p in providers if isinstance(p, str))
