"""What the agent API shows of the controller: ``/v1/metrics`` (the seed's shape), the
telemetry line, the per-key policy status and ``/v1/health``. Reads only; null where a
figure was not measured.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from inferos.controller import backend_stats, policy_report
from inferos.controller.cache_types import by_name
from inferos.controller.liveness import UNREACHABLE, UNRESPONSIVE

if TYPE_CHECKING:
    from inferos.controller.controller import Controller


def delta_ppl_est(controller: Controller) -> float | None:
    """Measured, or null: the engine's own estimate over the KV it holds (per-level
    calibration of this model), or a llama.cpp cache type's measured cost once the
    backend reported that type in effect."""
    caps = controller.capabilities
    if caps is None:
        return None
    if caps.kind == "engine":
        return controller.metrics.backend.latest.delta_ppl_est
    state = controller.state
    cache_type = state.settings.get("cache_type") if state is not None else None
    if not isinstance(cache_type, str):
        return None
    try:
        return by_name(cache_type).delta_ppl
    except KeyError:
        return None

def spec_accept(controller: Controller) -> float | None:
    """Measured, or null: the share of speculative drafts accepted. The engine's own
    count (every sequence since it started) when it reports speculation, null while it
    has drafted nothing; for a backend with no such report, the requests of the last
    window whose timings counted drafts (llama.cpp's ``draft_n``, when its server was
    started speculating); null when none did, as for Lemonade and a llama.cpp server
    that does not speculate."""
    scheduler = controller.metrics.backend.latest.scheduler
    if scheduler is not None and scheduler.speculation is not None:
        return scheduler.speculation.accept_rate
    return controller.stats.overall().spec_accept


def metrics_fields(controller: Controller) -> dict[str, Any]:
    overall = controller.stats.overall()
    last = controller.contexts[-1] if controller.contexts else None
    sample = controller.last_sample
    kv = controller.metrics.backend.latest.kv_tokens
    return {
        "t": time.time(), "model": last.model if last else None,
        "seq_len": last.seq_len if last else None,
        "batch": controller.plane.in_flight(generation=True),
        "tps": overall.tps, "ftl": overall.ttft_p50_ms, "p95": overall.ttft_p95_ms,
        "vram": None, "host_mem": round(sample.host_mem_used_gb, 3) if sample else None,
        "npu_util": None, "igpu_util": None,
        **{f"kv_{level}": kv.get(level) for level in backend_stats.LEVELS},
        "delta_ppl_est": controller.delta_ppl_est(), "spec_accept": spec_accept(controller),
    }

def agent_metrics(controller: Controller) -> dict[str, Any]:
    f = controller.metrics_fields()
    sample = controller.last_sample
    return {
        "tps": f["tps"], "ftl_ms": f["ftl"], "p95_ms": f["p95"],
        "mem": {"vram_gb": None, "host_gb": f["host_mem"],
                "kv_levels": {level: f[f"kv_{level}"] for level in backend_stats.LEVELS}},
        "util": {"npu": None, "igpu": None, "cpu": sample.cpu_percent if sample else None},
        "quality": {"delta_ppl_est": f["delta_ppl_est"], "spec_accept": f["spec_accept"]},
    }

def policy_status(controller: Controller) -> dict[str, dict[str, Any]]:
    snapshot = controller.snapshots.current
    return policy_report.build(snapshot.policy, controller.plane.snapshot.passthrough,
                               controller.capabilities, controller.state,
                               controller.restart_outcomes, controller.live_outcomes,
                               snapshot.mode_switch)

def health(controller: Controller) -> dict[str, Any]:
    snapshot = controller.snapshots.current
    minute = controller.stats.overall(60.0)
    caps, state = controller.capabilities, controller.state
    decision = controller.last_decision
    scheduler = controller.metrics.backend.latest.scheduler
    memory = controller.metrics.backend.latest.memory
    mode = controller.modes.last
    liveness = controller.liveness.as_dict()
    # A backend that does not answer degrades health (the API may raise it to passthrough).
    status = {"status": "degraded"} if liveness["state"] in (UNRESPONSIVE, UNREACHABLE) else {}
    return {
        **status,
        # Whether the backend answers its health probe at all (controller/liveness.py).
        "backend_liveness": liveness,
        "last_minute": {"requests": minute.requests, "errors": minute.errors,
                        "ttft_p50_ms": minute.ttft_p50_ms, "ttft_p95_ms": minute.ttft_p95_ms,
                        "tps": minute.tps, "spec_accept": minute.spec_accept},
        "policy_version": snapshot.version,
        "policy": snapshot.policy.to_dict(),
        "policy_status": controller.policy_status(),
        # What the backend reported back, not what was asked of it.
        "backend_settings": dict(state.settings) if state is not None else {},
        "backend": {
            "kind": caps.kind if caps else None, "version": caps.version if caps else None,
            "model": state.model if state else None,
            "max_ctx": state.max_ctx if state else None,
            "wanted": snapshot.backend.as_dict(),
            "client_changed_s_ago": None if controller.client_changed_at is None
            else round(time.monotonic() - controller.client_changed_at, 1),
            "last_decision": decision.as_event() if decision else None,
            # The engine's memory and budget as it reports them (null: not an engine,
            # or a figure its machine cannot measure).
            "memory": memory.as_dict() if memory is not None else None,
        },
        # The engine's scheduler as it reports itself (placement: where prefill and
        # decode run, and whether that fell back from what was asked, and why); null for
        # a backend with none. mode_switch: a mode the controller runs instead of the
        # policy's, while a queue or heat lasts.
        "scheduler": {
            "engine": scheduler.as_dict() if scheduler is not None else None,
            "mode_switch": snapshot.mode_switch.as_dict() if snapshot.mode_switch else None,
            "last_mode_decision": mode.as_event() if mode is not None else None,
        },
        "controller": {
            "heartbeat_age_ms": round((time.monotonic() - controller.failsafe.heartbeat_at)
                                      * 1000, 1),
            "failsafe_trips": controller.failsafe.trips,
            # How the staleness rule sees the controller now (stall, starvation excused).
            "failsafe": controller.failsafe.describe(),
            "last_fault_to_passthrough_ms": None if controller.failsafe.last_trip_latency_s
            is None else round(controller.failsafe.last_trip_latency_s * 1000, 3),
            "loops": {lp.name: {"period_ms": lp.period_s * 1000, "ticks": lp.ticks,
                                "errors": lp.errors,
                                "last_jitter_ms": round(lp.last_jitter_s * 1000, 3)}
                      for lp in controller.loops},
            "run_contexts": len(controller.contexts),
            "facts_dropped": controller.facts_dropped + controller.plane.facts.dropped,
            "concurrency_limit": controller.plane.snapshot.limit,
            "backend": controller.backend.name if controller.backend is not None else None,
            "actuating": controller.actuating,
        },
    }
