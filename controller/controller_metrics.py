"""Prometheus series of the control plane, on the same injected registry as the proxy's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferos.controller.backend_stats import BackendStatsCollector
from inferos.controller.loops import JITTER_BUCKETS


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.policy_version = Gauge("inferos_policy_version",
                                    "Version of the policy snapshot in effect", registry=registry)
        self.loop_jitter = Histogram("inferos_control_loop_jitter_seconds",
                                     "How late each control-loop tick started", ("loop",),
                                     registry=registry, buckets=JITTER_BUCKETS)
        self.run_contexts = Counter("inferos_run_contexts", "Run-contexts received",
                                    ("source",), registry=registry)
        self.run_contexts_dropped = Gauge(
            "inferos_run_contexts_dropped",
            "Run-contexts dropped because the controller's queue was full", registry=registry)
        self.reconfigurations = Counter("inferos_backend_reconfigurations",
                                        "Backend reconfigurations by result", ("result",),
                                        registry=registry)
        self.load_shed = Gauge("inferos_load_shed",
                               "1 while the controller limits concurrency (heat or memory)",
                               registry=registry)
        self.concurrency_limit = Gauge("inferos_concurrency_limit",
                                       "Generations admitted at once (0 = unlimited)",
                                       registry=registry)
        self.failsafe_tripped = Gauge("inferos_failsafe_tripped",
                                      "1 while the fail-safe holds the proxy in passthrough",
                                      registry=registry)
        self.ctx_size = Gauge("inferos_backend_ctx_size", "Context size in effect",
                              registry=registry)
        self.quality_promotions = Counter(
            "inferos_quality_guard_promotions",
            "Times the engine's quality guard promoted parked KV back toward L0 because its "
            "estimated dPPL passed quality.max_delta_ppl", registry=registry)
        self.backend = BackendStatsCollector()
        registry.register(self.backend)
