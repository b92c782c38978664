"""The backend's own stats, read defensively: the engine's scheduler block becomes frozen
values, and a field missing or of the wrong type is None (never a guess, never a raise);
at scrape time each reported figure is a Prometheus series, and an unreported one is
absent."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferos.controller.backend_stats import (
    BackendStats,
    BackendStatsCollector,
    Placement,
    SchedulerStats,
    Speculation,
)

ENGINE = {"scheduler": {"queue_depth": 3, "queue_wait_ms_p50": 41.5, "batch_occupancy": 0.75,
                        "max_batch": 8, "prefill_chunks": 5, "prefill_chunk_tokens": 640,
                        "speculation": {"drafted": 40, "accepted": 30, "accept_rate": 0.75,
                                        "sequences_stopped": 1, "enabled": True},
                        "placement": {"fell_back": True, "reason": "dml is not available",
                                      "prefill_provider": "CPUExecutionProvider",
                                      "decode_provider": "CPUExecutionProvider"}}}
# The engine's own /api/v1/stats scheduler block after two grounded copy prompts at
# temperature 0 (this machine, engine/lemonade_routes.py), as it came.
REAL = {"max_batch": 8, "max_queue": 32, "rows": 16, "decoding": 0, "prefilling": 0,
        "queue_depth": 0, "admitted": 0,
        "queue_wait_ms": {"p50": 0.607, "max": 0.607, "window": 2},
        "decode_steps": 124, "batched_steps": 0, "batch_occupancy": 1.0, "prefill_chunks": 2,
        "prefill_chunk_tokens": 161, "last_prefill_chunk": 1,
        "speculation": {"verify_runs": 4, "drafted": 32, "accepted": 2, "accept_rate": 0.0625,
                        "sequences_stopped": 2, "enabled": True},
        "queue_wait_ms_p50": 0.607, "tpot_budget_ms": 100.0,
        "placement": {"prefill_provider": "CPUExecutionProvider",
                      "decode_provider": "CPUExecutionProvider", "prefill_device": "cpu",
                      "decode_device": "cpu", "mode": "cpu_only", "fell_back": False,
                      "reason": None}}


def test_the_engines_scheduler_block_is_read() -> None:
    scheduler = BackendStats.parse(ENGINE).scheduler
    assert scheduler == SchedulerStats(3, 41.5, 0.75, 8, Placement(
        True, "dml is not available", "CPUExecutionProvider", "CPUExecutionProvider"),
        5, 640, Speculation(40, 30, 0.75, 1, True))
    assert scheduler.as_dict() == ENGINE["scheduler"]


def test_the_engines_real_report_is_read() -> None:
    scheduler = SchedulerStats.parse(REAL)
    assert scheduler is not None and scheduler.speculation is not None
    assert (scheduler.queue_depth, scheduler.queue_wait_ms_p50, scheduler.batch_occupancy,
            scheduler.prefill_chunks, scheduler.prefill_chunk_tokens) == (0, 0.607, 1.0, 2, 161)
    assert scheduler.speculation.accept_rate == 2 / 32
    assert scheduler.speculation.enabled is True


@pytest.mark.parametrize(("block", "rate"), [
    ({"drafted": 0, "accepted": 0, "accept_rate": None}, None),  # nothing drafted yet
    ({"drafted": 0, "accepted": 0, "accept_rate": 0.5}, None),   # a rate of nothing
    ({"drafted": 3, "accepted": 1, "accept_rate": 0.3333}, 1 / 3),  # the counts, unrounded
    ({"accept_rate": 0.8}, 0.8),                                   # only the rate reported
    ({"drafted": 4, "accepted": 9}, None),                         # not a share
    ({"drafted": -4, "accepted": -1, "accept_rate": 1.5}, None),
    ({"drafted": "4", "accepted": 2}, None),
    ({}, None),
])
def test_acceptance_is_accepted_over_drafted_or_none(block: dict[str, Any],
                                                     rate: float | None) -> None:
    speculation = Speculation.parse(block)
    assert speculation is not None and speculation.accept_rate == rate


def test_a_backend_without_a_scheduler_reports_none() -> None:
    assert BackendStats.parse({"kv_levels": {}}).scheduler is None  # Lemonade, llama.cpp
    assert BackendStats.parse(None).scheduler is None
    assert SchedulerStats.parse({"queue_depth": 1}) == SchedulerStats(queue_depth=1)


def _registry(body: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    collector = BackendStatsCollector()
    collector.latest = BackendStats.parse(body)
    registry.register(collector)
    return registry


def _scrape(body: Any) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(
        generate_latest(_registry(body)).decode()) for s in f.samples}


SCHEDULER_SERIES = ("inferos_scheduler_max_batch", "inferos_scheduler_batch_occupancy",
                    "inferos_scheduler_queue_depth", "inferos_scheduler_queue_wait_p50_seconds",
                    "inferos_scheduler_prefill_chunks_total",
                    "inferos_scheduler_prefill_chunk_tokens_total")
SPEC_SERIES = ("inferos_spec_drafted_tokens_total", "inferos_spec_accepted_tokens_total",
               "inferos_spec_sequences_stopped_total", "inferos_spec_accept_ratio")


def test_the_scheduler_and_speculation_are_prometheus_series() -> None:
    samples = _scrape({"scheduler": REAL})
    assert samples["inferos_scheduler_max_batch"] == 8
    assert samples["inferos_scheduler_batch_occupancy"] == 1.0
    assert samples["inferos_scheduler_queue_depth"] == 0
    assert samples["inferos_scheduler_queue_wait_p50_seconds"] == pytest.approx(0.000607)
    assert samples["inferos_scheduler_prefill_chunks_total"] == 2
    assert samples["inferos_scheduler_prefill_chunk_tokens_total"] == 161
    assert samples["inferos_spec_drafted_tokens_total"] == 32
    assert samples["inferos_spec_accepted_tokens_total"] == 2
    assert samples["inferos_spec_sequences_stopped_total"] == 2
    assert samples["inferos_spec_accept_ratio"] == pytest.approx(0.0625)


def test_what_is_not_reported_is_absent() -> None:
    # Lemonade, llama.cpp: no scheduler at all, so none of its series.
    samples = _scrape({"kv_levels": {"L0": {"tokens": 5, "bytes": 10}}})
    assert samples["inferos_kv_level_tokens"] == 5
    assert not {*SCHEDULER_SERIES, *SPEC_SERIES} & set(samples)
    # The engine before anything was drafted or decoded: counts, but no ratio or mean.
    fresh = {**REAL, "batch_occupancy": None, "queue_wait_ms_p50": None,
             "speculation": {"drafted": 0, "accepted": 0, "accept_rate": None}}
    samples = _scrape({"scheduler": fresh})
    assert samples["inferos_spec_drafted_tokens_total"] == 0
    assert "inferos_spec_accept_ratio" not in samples
    assert "inferos_scheduler_batch_occupancy" not in samples
    assert "inferos_scheduler_queue_wait_p50_seconds" not in samples


@pytest.mark.parametrize(("block", "expected"), [
    ({"queue_depth": "3", "batch_occupancy": True, "max_batch": 8.0},
     SchedulerStats(max_batch=None)),
    ({"queue_wait_ms_p50": None, "queue_depth": 0}, SchedulerStats(queue_depth=0)),
    ({"queue_wait_ms_p50": math.nan, "batch_occupancy": math.inf}, SchedulerStats()),
    ({"placement": {"fell_back": "no"}}, SchedulerStats()),
    ({"placement": {"fell_back": False, "reason": 5, "prefill_provider": ["x"]}},
     SchedulerStats(placement=Placement(False, None, None, None))),
])
def test_wrong_fields_are_none_and_the_rest_counts(block: dict[str, Any],
                                                   expected: SchedulerStats) -> None:
    assert SchedulerStats.parse(block) == expected


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.text(max_size=8), children, max_size=4),
                     max_leaves=10)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["queue_depth", "queue_wait_ms_p50", "batch_occupancy",
                                        "max_batch", "placement", "prefill_chunks",
                                        "speculation"]), _json))
def test_any_scheduler_block_parses_without_raising(block: dict[str, Any]) -> None:
    parsed = SchedulerStats.parse(block)
    assert parsed is not None
    assert parsed.queue_depth is None or isinstance(parsed.queue_depth, int)
    assert parsed.prefill_chunks is None or parsed.prefill_chunks >= 0


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["drafted", "accepted", "accept_rate",
                                        "sequences_stopped", "enabled"]), _json))
def test_any_speculation_block_gives_a_share_or_none(block: dict[str, Any]) -> None:
    speculation = Speculation.parse(block)
    assert speculation is not None
    rate = speculation.accept_rate
    assert rate is None or 0.0 <= rate <= 1.0
    _scrape({"scheduler": {"speculation": block}})  # and scrapes without raising


# The engine's stats.memory after a few chats (this machine, engine/runtime_stats.py).
MEMORY = {"rss_bytes": 1_189_003_264, "start_rss_bytes": 757_002_240,
          "weights_bytes": 540_328_112, "batch_buffer_bytes": 1_509_949_440,
          "batch_buffer_resident_bytes": 23_592_960, "batch_rows": 16,
          "parked_kv_bytes": 6_291_456, "host_pool_bytes": 3_159_359_488,
          "machine_total_bytes": 25_276_989_440, "machine_available_bytes": None,
          "budget_bytes": 5_426_311_168}


def test_the_engines_memory_and_budget_are_series() -> None:
    parsed = BackendStats.parse({"memory": MEMORY})
    assert parsed.memory is not None and parsed.memory.budget_bytes == 5_426_311_168
    samples = _scrape({"memory": MEMORY})
    assert samples["inferos_engine_memory_budget_bytes"] == 5_426_311_168
    assert samples["inferos_engine_host_pool_bytes"] == 3_159_359_488
    text = generate_latest(_registry({"memory": MEMORY})).decode()
    kinds = {s.labels["kind"]: s.value for f in text_string_to_metric_families(text)
             if f.name == "inferos_engine_memory_bytes" for s in f.samples}
    assert kinds == {"rss": 1_189_003_264, "start_rss": 757_002_240,
                     "weights": 540_328_112, "batch_buffer_allocated": 1_509_949_440,
                     "batch_buffer_resident": 23_592_960, "parked_kv": 6_291_456}


def test_memory_the_engine_could_not_measure_is_absent_not_zero() -> None:
    body = {**MEMORY, "rss_bytes": None, "batch_buffer_resident_bytes": None,
            "start_rss_bytes": None, "budget_bytes": None}
    memory = BackendStats.parse({"memory": body}).memory
    assert memory is not None and memory.as_dict()["rss_bytes"] is None
    assert memory.as_dict()["budget_bytes"] is None
    text = generate_latest(_registry({"memory": body})).decode()
    kinds = {s.labels["kind"] for f in text_string_to_metric_families(text)
             if f.name == "inferos_engine_memory_bytes" for s in f.samples}
    assert kinds == {"weights", "batch_buffer_allocated", "parked_kv"}
    assert "inferos_engine_memory_budget_bytes" not in text
    # Lemonade, llama.cpp: no memory block, no series.
    assert BackendStats.parse({"kv_levels": {}}).memory is None
    assert "inferos_engine_memory" not in generate_latest(_registry({})).decode()
