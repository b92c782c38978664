"""Profiles: named policy bundles. The README's table documents what each one sets.

- safe: nothing lossy. Full-precision KV, no eviction, a wide recent window.
- balanced (default): the seed's thresholds; 8-bit KV where the backend supports it
  (llama.cpp q8_0 measured at dPPL <= 0.09 on this model: controller/cache_types.py).
- aggressive: 4-bit KV as a ceiling, lower thresholds, eviction allowed inside long
  contexts, a small recent window; for memory-starved machines. A KV type is taken only
  when its measured cost fits the quality budget (q4_0 measured +1.69 here: over 1.0, so
  the controller runs q8_0 even under this profile).

None of them sets the scheduler or speculation: batching and prompt-lookup speculation
are exact (greedy output is token for token what a request gets alone, and sampled
output keeps its distribution), so ``safe`` has nothing lossy to turn off there. Each
keeps the declared defaults.
"""

from __future__ import annotations

from inferos.controller.policy import KvPolicy, LevelThresholds, Policy, QualityPolicy

PROFILE_POLICIES: dict[str, Policy] = {
    "safe": Policy(
        profile="safe",
        quality=QualityPolicy(max_delta_ppl=0.1),
        kv=KvPolicy(recent_window=256, sink_tokens=4, cache_type="f16", allow_evict=False,
                    level_thresholds=LevelThresholds(L1_int8=0.9, L2_int4=0.8, L3_evict=0.7)),
    ),
    "balanced": Policy(
        profile="balanced",
        quality=QualityPolicy(max_delta_ppl=0.5),
        kv=KvPolicy(recent_window=64, sink_tokens=4, cache_type="q8_0", allow_evict=False,
                    level_thresholds=LevelThresholds(L1_int8=0.7, L2_int4=0.5, L3_evict=0.3)),
    ),
    "aggressive": Policy(
        profile="aggressive",
        quality=QualityPolicy(max_delta_ppl=1.0),
        kv=KvPolicy(recent_window=32, sink_tokens=4, cache_type="q4_0", allow_evict=True,
                    level_thresholds=LevelThresholds(L1_int8=0.5, L2_int4=0.3, L3_evict=0.15)),
    ),
}


def profile_policy(name: str) -> Policy:
    return PROFILE_POLICIES[name]
