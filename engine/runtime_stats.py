"""The ``stats()`` report of a ``LoadedModel``: its counters, pool, store and guard as JSON.

Contract: ``model_stats(model)`` reads the model and returns a fresh dict of plain JSON
values; it changes nothing (no counter is reset, no KV moves). Its keys are what
``LoadedModel.stats`` has always returned: ``engine``, ``kv_copy``, ``kv_pool``,
``kv_levels``, ``prefix_cache``, ``kv_store``, ``context_eviction``, ``quality``, and
``memory`` (``model_memory``: the process RSS, weights, batch buffer and parked KV beside
the budget they add up to, engine/memory_budget.py). Called on the generation thread, as
``LoadedModel.stats`` is; ``model_memory`` may be called from any thread (it reads the
pool's pages and the prefix cache's last byte count, never walks the store).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from inferos.engine.memory_budget import (
    EngineMemory,
    engine_memory,
    process_rss_bytes,
    weights_bytes,
)

if TYPE_CHECKING:
    from inferos.engine.runtime import LoadedModel

NO_PARKED_KV = "the prefix cache is off (--no-prefix-cache): no KV is parked"

__all__ = ["NO_PARKED_KV", "memory_report", "model_memory", "model_stats"]


def memory_report(model: LoadedModel | None) -> dict[str, Any]:
    """The ``memory`` object of health and ``/stats``: the model's ``EngineMemory``, or
    with no model loaded the process RSS alone (no budget: nothing is loaded to bound)."""
    if model is not None:
        return model_memory(model).as_dict()
    return {"rss_bytes": process_rss_bytes(), "budget_bytes": None}


def model_memory(model: LoadedModel) -> EngineMemory:
    """The engine's memory now and its budget, for ``/stats`` and health."""
    cache = model.prefix_cache
    pool = model.pool
    return engine_memory(start_rss=pool.rss_at_start, weights=weights_bytes(model.folder),
                         batch=pool.arrays(), rows=pool.capacity,
                         parked_kv=cache.parked_bytes if cache is not None else 0,
                         host_pool=model.policy.host_pool_bytes if cache is not None else 0)


def model_stats(model: LoadedModel) -> dict[str, Any]:
    """``model.stats()``: a snapshot, read on the generation thread."""
    c = model.counters
    pool: dict[str, Any] = dict(model.pool.stats())
    pool["cached_tokens"] = model.pool.cached_tokens()
    cache = model.prefix_cache
    evicted = model.evictor.evicted_tokens if model.evictor is not None else 0
    levels = cache.kv_levels() if cache is not None else {
        level: {"tokens": 0, "bytes": 0} for level in ("L0", "L1", "L2", "L3")}
    levels["L3"]["tokens"] += evicted  # L3 also counts tokens evicted inside a context
    return {
        "engine": {"model": model.name, "provider": model.provider,
                   "ctx_size": model.ctx_size, "threads": model.options.threads,
                   "generations": c.generations, "prompt_tokens": c.prompt_tokens,
                   "generated_tokens": c.generated_tokens,
                   "prefill_seconds": round(c.prefill_s, 3),
                   "decode_seconds": round(c.decode_s, 3),
                   "pid": os.getpid()},
        "kv_copy": {"runs": c.runs, "checked_runs": c.checked_runs, "copies": c.kv_copies,
                    "bytes": c.kv_bytes_copied,
                    "bytes_in_place": c.kv_bytes_in_place,
                    "bytes_per_generation": c.kv_bytes_copied // max(c.generations, 1)},
        "kv_pool": pool,
        # The prefix cache's store; the pool's free buffer is in kv_pool.
        "kv_levels": levels,
        "prefix_cache": {"enabled": cache is not None,
                         "hits": c.prefix_hits, "misses": c.prefix_misses,
                         "reused_tokens": c.reused_tokens},
        "kv_store": cache.stats() if cache is not None else None,
        "context_eviction": {"enabled": model.allow_evict,
                             "available": model.evictor is not None,
                             "reason": model.no_eviction,
                             "evictions": model.evictor.evictions if model.evictor else 0,
                             "evicted_tokens": evicted},
        "quality": cache.guard.stats() if cache is not None else {
            "delta_ppl_est": None, "calibrated": False,
            "guard": {"max_delta_ppl": model.policy.max_delta_ppl, "promotions": 0,
                      "last_promotion_at": None, "held_blocks": 0, "can_act": False,
                      "reason": NO_PARKED_KV}},
        "memory": model_memory(model).as_dict(),
    }
