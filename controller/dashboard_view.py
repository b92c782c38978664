"""What the dashboard page (``GET /`` on the admin port) shows, as one JSON document:
``GET /v1/dashboard``, read by the page every second. Reads only, like agent_views; a
figure that was not measured is null, and the page says "not measured".

    latency     TTFT p50/p95, time per output token p50, end-to-end p95 (ms), over the
                last ``WINDOW_S`` seconds of generation requests the proxy observed
    throughput  aggregate tokens/s (completion tokens of the requests that finished in
                the window, over the window) and per-stream tokens/s (median decode speed)
    requests    by route and model over the window: requests and errors; in flight now
    engine      batch occupancy, queue depth, max_batch (null for a backend with no
                scheduler of its own)
    kv          tokens and bytes by level (L0 exact .. L3 evicted), prefix-cache hits,
                misses and hit rate
    quality     delta_ppl_est, spec_accept
    policy      version, profile, mode, and each policy key's status (applied or not)
    failsafe    passthrough (and why), trips, heartbeat age
    events      the latest controller events (failover, reconfigured, not applied,
                decisions with their evidence), newest last
    backend     kind, version, model, device

Prompts and completions never reach it: records carry counts and times only.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from inferos.controller.request_stats import percentile
from inferos.proxy.routes import is_generation

if TYPE_CHECKING:
    from inferos.controller.controller import Controller

__all__ = ["WINDOW_S", "dashboard"]

WINDOW_S = 10.0
EVENTS_SHOWN = 20


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _traffic(controller: Controller) -> dict[str, Any]:
    now = time.monotonic()
    records = [r for at, r in controller.stats.timed() if at >= now - WINDOW_S]
    generations = [r for r in records if is_generation(r.route)]
    ttft = [r.ttft_s * 1000 for r in generations if r.ttft_s is not None]
    tpot = [r.tpot_s * 1000 for r in generations if r.tpot_s]
    e2e = [r.e2e_s * 1000 for r in generations]
    speeds = [1 / r.tpot_s for r in generations if r.tpot_s]
    tokens = sum(r.completion_tokens or 0 for r in generations)
    requests: Counter[tuple[str, str]] = Counter()
    errors: Counter[tuple[str, str]] = Counter()
    for r in records:
        requests[r.route, r.model] += 1
        if r.status >= 400 or r.outcome != "ok" or r.in_band_error:
            errors[r.route, r.model] += 1
    return {
        "window_s": WINDOW_S,
        "latency": {"ttft_p50_ms": _round(percentile(ttft, 50)),
                    "ttft_p95_ms": _round(percentile(ttft, 95)),
                    "tpot_p50_ms": _round(percentile(tpot, 50), 2),
                    "e2e_p95_ms": _round(percentile(e2e, 95))},
        "throughput": {"aggregate_tps": _round(tokens / WINDOW_S) if generations else None,
                       "stream_tps": _round(percentile(speeds, 50))},
        "requests": {
            "by_route_model": [{"route": route, "model": model, "requests": n,
                                "errors": errors[route, model]}
                               for (route, model), n in sorted(requests.items())],
            "in_flight": controller.plane.in_flight(),
            "generations_in_flight": controller.plane.in_flight(generation=True)},
    }


def _engine(controller: Controller) -> dict[str, Any]:
    latest = controller.metrics.backend.latest
    scheduler = latest.scheduler
    hits, misses = latest.prefix_hits, latest.prefix_misses
    looked = (hits or 0) + (misses or 0)
    return {
        "scheduler": None if scheduler is None else {
            "batch_occupancy": scheduler.batch_occupancy, "queue_depth": scheduler.queue_depth,
            "max_batch": scheduler.max_batch, "queue_wait_ms_p50": scheduler.queue_wait_ms_p50},
        "kv": {"tokens": dict(latest.kv_tokens), "bytes": dict(latest.kv_bytes),
               "prefix_hits": hits, "prefix_misses": misses,
               "prefix_hit_rate": round(hits / looked, 3) if hits is not None and looked
               else None},
    }


def _policy(controller: Controller) -> dict[str, Any]:
    snapshot = controller.snapshots.current
    status = controller.policy_status()
    counts = Counter(entry["status"] for entry in status.values())
    return {"version": snapshot.version, "profile": snapshot.policy.profile,
            "mode": snapshot.policy.mode, "counts": dict(counts),
            "keys": {key: {"status": entry["status"], "in_effect": entry.get("in_effect"),
                           "reason": entry.get("reason")} for key, entry in status.items()}}


def _backend(controller: Controller) -> dict[str, Any]:
    caps, state = controller.capabilities, controller.state
    scheduler = controller.metrics.backend.latest.scheduler
    placement = scheduler.placement if scheduler is not None else None
    settings = dict(state.settings) if state is not None else {}
    device = (placement.decode_provider if placement is not None else None) \
        or settings.get("provider") or settings.get("device")
    return {"kind": caps.kind if caps else None, "version": caps.version if caps else None,
            "model": state.model if state else None,
            "device": device if isinstance(device, str) else None,
            "upstream": controller.plane.snapshot.upstream}


def dashboard(controller: Controller) -> dict[str, Any]:
    snapshot = controller.plane.snapshot
    failsafe = controller.failsafe
    quality = controller.agent_metrics()["quality"]
    return {
        "t": time.time(),
        **_traffic(controller),
        **_engine(controller),
        "quality": {"delta_ppl_est": quality["delta_ppl_est"],
                    "spec_accept": quality["spec_accept"]},
        "policy": _policy(controller),
        "failsafe": {"passthrough": snapshot.passthrough,
                     "reason": snapshot.failsafe_reason,
                     "user_passthrough": snapshot.forced_passthrough,
                     "trips": failsafe.trips,
                     "heartbeat_age_ms": round((time.monotonic() - failsafe.heartbeat_at)
                                               * 1000, 1)},
        "events": list(controller.recent_events)[-EVENTS_SHOWN:],
        "backend": _backend(controller),
    }
