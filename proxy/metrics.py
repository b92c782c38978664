"""Prometheus series of the data plane, on an injected registry.

Histogram names and buckets follow OpenTelemetry's GenAI semantic conventions (server
metrics) in Prometheus form; project series start with ``inferos_``. Label values come
from closed sets (routes) or are capped (models), never from user text.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferos.proxy.record import RequestRecord

# OpenTelemetry semantic conventions, gen_ai.server.* / gen_ai.client.token.usage.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
# Inter-token gaps are finer than TPOT: a 135M model on CPU streams every ~10 ms.
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
               0.5, 1.0, 2.5)
# A request's share of speculative drafts accepted (0..1).
ACCEPT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MAX_MODEL_LABELS = 32


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry, passthrough: Callable[[], bool]):
        self._models: set[str] = set()
        labels = ("model", "route")
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request arrival at the proxy to the first generated token",
            labels, registry=registry, buckets=TTFT_BUCKETS)
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Decode time per output token after the first",
            labels, registry=registry, buckets=TPOT_BUCKETS)
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "End-to-end time of a request through the proxy",
            (*labels, "status"), registry=registry, buckets=DURATION_BUCKETS)
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request, input (prompt) or output (completion)",
            (*labels, "gen_ai_token_type"), registry=registry, buckets=TOKEN_BUCKETS)
        self.gaps = Histogram(
            "inferos_inter_token_gap_seconds",
            "Gap between consecutive streamed tokens",
            labels, registry=registry, buckets=GAP_BUCKETS)
        self.spec_accept = Histogram(
            "inferos_request_spec_accept_ratio",
            "Share of a request's speculative drafts that were accepted (timings.draft_n, "
            "draft_n_accepted), for requests that drafted",
            labels, registry=registry, buckets=ACCEPT_BUCKETS)
        self.requests = Counter(
            "inferos_requests",
            "Requests forwarded, by outcome as the proxy saw it",
            (*labels, "status", "stream", "outcome"), registry=registry)
        self.token_sources = Counter(
            "inferos_token_count_source",
            "Where a request's token counts came from: usage, timings, counted, estimate, none",
            ("gen_ai_token_type", "source"), registry=registry)
        self.in_flight = Gauge(
            "inferos_requests_in_flight", "Requests being forwarded now", registry=registry)
        self.passthrough = Gauge(
            "inferos_passthrough", "1 while the proxy forwards only (passthrough mode)",
            registry=registry)
        self.passthrough.set_function(lambda: 1.0 if passthrough() else 0.0)

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return "other"
        self._models.add(model)
        return model

    def observe(self, record: RequestRecord) -> None:
        model = self.model_label(record.model)
        route = record.route
        status = str(record.status) if record.status else record.outcome
        self.requests.labels(model, route, status, str(record.stream).lower(),
                             record.outcome).inc()
        self.duration.labels(model, route, status).observe(record.e2e_s)
        if record.ttft_s is not None:
            self.ttft.labels(model, route).observe(record.ttft_s)
        if record.tpot_s is not None:
            self.tpot.labels(model, route).observe(record.tpot_s)
        if record.spec_accept is not None:
            self.spec_accept.labels(model, route).observe(record.spec_accept)
        if record.gaps_s:
            gaps = self.gaps.labels(model, route)
            for gap in record.gaps_s:
                gaps.observe(gap)
        for kind, count, source in (
            ("input", record.prompt_tokens, record.prompt_source),
            ("output", record.completion_tokens, record.completion_source),
        ):
            if count is not None:
                self.tokens.labels(model, route, kind).observe(count)
            if record.completion_source != "none" or record.prompt_source != "none":
                self.token_sources.labels(kind, source).inc()
