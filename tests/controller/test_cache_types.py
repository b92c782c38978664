"""controller/cache_types.py: the one table of llama.cpp's KV-cache types is consistent.

Fast and pure: the figures are bench/llamacpp_kv_cost.py's to measure; this checks what
must hold whatever it measured (ggml's ids and block sizes, an order from exact to
compact, costs that are measured or None, never invented).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from inferos.controller import cache_types
from inferos.controller.cache_types import CACHE_TYPES, CacheType, by_name
from inferos.controller.setting_table import CACHE_TYPE_NAMES

# ggml's blocks (ggml-common.h): 32 codes and one f16 scale.
BLOCK = 32
CODE_BITS = {"q8_0": 8, "q4_0": 4}


def test_the_table_holds_llama_cpp_types_by_their_ggml_ids() -> None:
    assert [(c.name, c.ggml_id) for c in CACHE_TYPES] == [("f16", 1), ("q8_0", 8), ("q4_0", 2)]
    assert tuple(c.name for c in CACHE_TYPES) == CACHE_TYPE_NAMES  # the setting's choices


def test_ggml_ids_are_llama_cpp_python_s_own() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for cache in CACHE_TYPES:
        assert getattr(llama_cpp, f"GGML_TYPE_{cache.name.upper()}") == cache.ggml_id


def test_bytes_per_element_follow_ggml_blocks_and_shrink_down_the_table() -> None:
    assert by_name("f16").bytes_per_element == 2.0
    for name, bits in CODE_BITS.items():
        assert by_name(name).bytes_per_element == (BLOCK * bits // 8 + 2) / BLOCK
    sizes = [c.bytes_per_element for c in CACHE_TYPES]
    assert sizes == sorted(sizes, reverse=True)


def test_costs_are_measured_or_none_and_say_how() -> None:
    reference, *others = CACHE_TYPES
    assert reference.delta_ppl == 0.0
    measured = [c for c in others if c.delta_ppl is not None]
    for cache in measured:
        assert cache.delta_ppl is not None
        assert math.isfinite(cache.delta_ppl) and cache.delta_ppl >= 0
        assert "bench/llamacpp_kv_cost.py" in cache.measured and "2026-12-02" in cache.measured
    for cache in others:
        assert cache.measured, f"{cache.name} does not say how its cost was (not) measured"
    costs = [c.delta_ppl for c in [reference, *measured]]
    assert costs == sorted(costs)  # type: ignore[type-var]  # fewer bits never cost less


def test_by_name_and_frozen_entries() -> None:
    assert all(by_name(c.name) is c for c in CACHE_TYPES)
    with pytest.raises(KeyError):
        by_name("q5_1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_name("q8_0").delta_ppl = 0.0  # type: ignore[misc]
    assert isinstance(cache_types.CACHE_TYPES, tuple)
    assert CacheType("x", 0, 1.0, None, "not measured").delta_ppl is None
