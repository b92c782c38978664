"""llama.cpp's KV-cache types: the one table (ggml id, bytes per element, measured cost).

Ordered from the exact reference to the most compact: decisions read "more compact" as
"later in the table".

``bytes_per_element`` follows ggml's block layouts: f16 is 2 bytes; q8_0 stores a block of
32 int8 codes with one f16 scale (34 / 32); q4_0 32 4-bit codes with one f16 scale
(18 / 32).

``delta_ppl`` is the quality cost measured on this project's model (SmolLM2-135M-Instruct,
the Q4_1 GGUF) by ``python bench/llamacpp_kv_cost.py`` with llama-cpp-python: the same
licence text as the engine's KV calibration, the same n_ctx, flash attention on for every
type, K and V both in the type, against f16. It is the ΔPPL implied by the mean KL
divergence from f16, ``ppl_f16 * (exp(KL) - 1)``, the estimator the engine's calibration
publishes (engine/kv_calibration.py says why), so that ``delta_ppl_est`` means the same on
both backends. The run printed (1,023 scored tokens, PPL 19.221 with f16):

    f16, flash-attn off (control)  dPPL (KL) +0.0781 +- 0.0029   perplexity +0.104 +- 0.059
    q8_0                           dPPL (KL) +0.0907 +- 0.0037   perplexity +0.008 +- 0.065
    q4_0                           dPPL (KL) +1.6943 +- 0.1121   perplexity +1.189 +- 0.312

The control is the floor of the measurement: f16 through the other attention kernel
diverges from f16 about as much as q8_0 does (KL 0.0041 against 0.0047), so q8_0's figure
is mostly llama.cpp's own numerics on this model, not the cache type (RUNTIME_FACTS.md:
its matmuls quantize activations and this small model is sensitive to that). It is kept as
measured, an upper bound on what q8_0 itself costs, rather than a guess at the difference.
q4_0 is 20x over the floor: a real cost (perplexity x1.062; RUNTIME_FACTS found 4-7%).

None would mean "not measured": such a type is never chosen, and its cost is reported null.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CACHE_TYPES", "CacheType", "by_name"]

_MEASURED = ("SmolLM2-135M Q4_1, 1023 tokens, n_ctx 1024, flash-attn, KL-implied vs f16, "
             "2026-12-02, python bench/llamacpp_kv_cost.py")


@dataclass(frozen=True, slots=True)
class CacheType:
    """One llama.cpp cache type (``--type_k``/``--type_v`` take ``ggml_id``)."""

    name: str
    ggml_id: int
    bytes_per_element: float
    delta_ppl: float | None
    measured: str


CACHE_TYPES: tuple[CacheType, ...] = (
    CacheType("f16", 1, 2.0, 0.0, "the reference"),
    CacheType("q8_0", 8, 34 / 32, 0.0907, _MEASURED),
    CacheType("q4_0", 2, 18 / 32, 1.6943, _MEASURED),
)


def by_name(name: str) -> CacheType:
    """The cache type called ``name``; ``KeyError`` for a name llama.cpp's table lacks."""
    for cache in CACHE_TYPES:
        if cache.name == name:
            return cache
    raise KeyError(name)
