"""The backend's own live state (KV-cache levels, prefix-cache hits), read from its
``/api/v1/stats`` and exposed at scrape time by a custom Prometheus collector.

The embedded engine reports ``kv_levels: {"L0": {"tokens", "bytes"}, ... "L3": ...}`` and
``prefix_cache: {"hits", "misses"}``; Lemonade and llama.cpp report neither, so these
series are simply absent for them (and ``/v1/metrics`` shows null), never invented.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferos.kvstore.levels import Level  # the one table of KV levels

LEVELS = tuple(level.name for level in Level)
STATS_PATH = "/api/v1/stats"


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
        return cls(tokens, sizes, hits, misses, estimate, promotions)


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


async def fetch(client: httpx.AsyncClient, upstream: str) -> BackendStats:
    try:
        response = await client.get(upstream + STATS_PATH, timeout=2.0)
        return BackendStats.parse(response.json() if response.status_code == 200 else None)
    except (httpx.HTTPError, ValueError):
        return BackendStats()
