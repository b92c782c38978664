"""decide_level: thresholds, sink and recent-window protection, pinning, quality promotion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferos.errors import ConfigError
from inferos.kvstore.chunk import ChunkId, KvChunk
from inferos.kvstore.levels import Level, LevelThresholds, QualitySignal, decide_level


def _chunk(start: int, stop: int, pinned: bool = False) -> KvChunk:
    kv = np.zeros((3, stop - start, 64), dtype=np.float32)
    return KvChunk.exact(ChunkId(0, (0, 3), (start, stop)), kv, kv.copy(), pinned=pinned)


MIDDLE = _chunk(512, 544)  # far from the sinks and from the end of a 2048-token context


@pytest.mark.parametrize(
    "importance,expected",
    [(0.95, Level.L0), (0.7, Level.L0), (0.69, Level.L1), (0.5, Level.L1),
     (0.49, Level.L2), (0.3, Level.L2), (0.29, Level.L3), (-0.2, Level.L3)],
)
def test_thresholds_map_importance_to_levels(importance: float, expected: Level) -> None:
    assert decide_level(MIDDLE, importance, context_len=2048) is expected


def test_sink_tokens_stay_exact() -> None:
    assert decide_level(_chunk(0, 32), -1.0, context_len=2048) is Level.L0
    assert decide_level(_chunk(3, 32), -1.0, context_len=2048, sink_tokens=4) is Level.L0
    assert decide_level(_chunk(4, 32), -1.0, context_len=2048, sink_tokens=4) is Level.L3


def test_recent_window_stays_exact() -> None:
    # The last 64 tokens of a 2048 context are [1984, 2048).
    assert decide_level(_chunk(1952, 1985), -1.0, context_len=2048) is Level.L0
    assert decide_level(_chunk(1920, 1984), -1.0, context_len=2048) is Level.L3
    assert decide_level(_chunk(1920, 1984), -1.0, context_len=2048,
                        recent_window=128) is Level.L0


def test_pinned_stays_exact() -> None:
    assert decide_level(_chunk(512, 544, pinned=True), -1.0, context_len=2048) is Level.L0


def test_degraded_quality_promotes_back_to_l0() -> None:
    ok = QualitySignal(delta_ppl_est=0.2, max_delta_ppl=0.5)
    bad = QualitySignal(delta_ppl_est=0.8, max_delta_ppl=0.5)
    unknown = QualitySignal(delta_ppl_est=None)
    assert decide_level(MIDDLE, 0.4, context_len=2048, quality=ok) is Level.L2
    assert decide_level(MIDDLE, 0.4, context_len=2048, quality=unknown) is Level.L2
    assert decide_level(MIDDLE, 0.4, context_len=2048, quality=bad) is Level.L0


@settings(max_examples=80, deadline=None)
@given(
    start=st.integers(0, 4000),
    length=st.integers(1, 64),
    context_extra=st.integers(0, 4000),
    low=st.floats(-1, 1),
    high=st.floats(-1, 1),
    window=st.integers(0, 256),
    sinks=st.integers(0, 16),
)
def test_protection_and_monotonicity_hold_everywhere(
    start: int, length: int, context_extra: int, low: float, high: float,
    window: int, sinks: int,
) -> None:
    chunk = _chunk(start, start + length)
    context_len = start + length + context_extra
    low, high = min(low, high), max(low, high)
    kw = {"context_len": context_len, "recent_window": window, "sink_tokens": sinks}
    lo_level = decide_level(chunk, low, **kw)  # type: ignore[arg-type]
    hi_level = decide_level(chunk, high, **kw)  # type: ignore[arg-type]
    assert hi_level <= lo_level  # more important never means lossier
    protected = start < sinks or start + length > context_len - window
    if protected:
        assert lo_level is Level.L0


def test_thresholds_from_config_and_validation() -> None:
    t = LevelThresholds.from_config({"L1_int8": 0.8, "L2_int4": 0.4, "L3_evict": 0.1})
    assert t == LevelThresholds(0.8, 0.4, 0.1)
    assert decide_level(MIDDLE, 0.45, t, context_len=2048) is Level.L1
    with pytest.raises(ConfigError) as err:
        LevelThresholds.from_config({"L1_int8": 0.2, "L2_int4": 0.5})
    assert err.value.key == "infer_os.kv.level_thresholds"
    with pytest.raises(ConfigError):
        LevelThresholds.from_config({"L4": 0.1})
    with pytest.raises(ConfigError):
        LevelThresholds.from_config({"L1_int8": "high"})  # type: ignore[dict-item]
