"""engine/kv_calibration.py: the per-level ΔPPL that the engine's delta_ppl_est is weighted
from, measured on the real model at prepare time and cached beside it.

The figures are the calibration's to measure, not this test's: on the real model it checks
only what must hold for any model (exact is free, fewer bits cost more, the raw perplexity
change agrees with the KL figure within its own noise) and that the cache behaves.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferos.engine import kv_calibration
from inferos.engine.kv_calibration import CALIBRATION_FILE, KvCalibration
from inferos.errors import ModelError

DELTAS = {"L0": 0.0, "L1": 0.1, "L2": 0.4}


def _calibration(deltas: dict[str, float] = DELTAS) -> KvCalibration:
    return KvCalibration(delta_ppl=deltas, reference_ppl=18.0, tokens=1024,
                         text_sha256="0" * 64)


def test_estimate_is_the_token_weighted_mean_of_the_levels_given() -> None:
    cal = _calibration()
    assert cal.estimate({"L0": 300, "L1": 100}) == pytest.approx(0.1 * 100 / 400)
    assert cal.estimate({"L1": 1, "L2": 1}) == pytest.approx(0.25)
    assert cal.estimate({"L2": 7}) == pytest.approx(0.4)
    # L3 (evicted) and unknown keys are not storage precisions: ignored, not counted.
    assert cal.estimate({"L0": 1, "L2": 1, "L3": 1000, "other": 5}) == pytest.approx(0.2)


def test_estimate_of_no_tokens_is_zero() -> None:
    cal = _calibration()
    assert cal.estimate({}) == 0.0
    assert cal.estimate({"L0": 0, "L1": 0, "L2": 0}) == 0.0
    assert cal.estimate({"L3": 12}) == 0.0


@given(st.dictionaries(st.sampled_from(["L0", "L1", "L2", "L3"]),
                       st.integers(min_value=0, max_value=10**9)),
       st.floats(0, 10), st.floats(0, 10))
def test_estimate_lies_between_the_levels_it_weighs(counts: dict[str, int], d1: float,
                                                    d2: float) -> None:
    cal = _calibration({"L0": 0.0, "L1": d1, "L2": d2})
    got = cal.estimate(counts)
    used = [cal.delta_ppl[lvl] for lvl, n in counts.items() if lvl != "L3" and n > 0]
    if not used:
        assert got == 0.0
    else:
        assert min(used) - 1e-9 <= got <= max(used) + 1e-9


def _valid_record() -> dict[str, object]:
    return {"version": kv_calibration.FILE_VERSION, "delta_ppl": dict(DELTAS),
            "observed_delta_ppl": {"L0": 0.0, "L1": 0.01, "L2": 0.3}, "reference_ppl": 18.0,
            "tokens": 1024, "scored_tokens": 960, "text_sha256": "a" * 64, "segment": 64}


def test_load_reads_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(_valid_record()))
    cal = kv_calibration.load(tmp_path)
    assert cal is not None
    assert dict(cal.delta_ppl) == DELTAS and cal.scored_tokens == 960
    assert cal.observed_delta_ppl["L2"] == 0.3 and cal.measured["segment"] == 64


def test_load_of_a_missing_file_is_none_and_quiet(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert kv_calibration.load(tmp_path) is None
        assert kv_calibration.load(tmp_path / "no-such-folder") is None
    assert caplog.records == []


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    json.dumps({**_valid_record(), "version": 999}).encode(),
    json.dumps({**_valid_record(), "delta_ppl": {"L0": 0.0, "L1": 0.1}}).encode(),
    json.dumps({**_valid_record(), "delta_ppl": {"L0": 0.0, "L1": "x", "L2": 1}}).encode(),
    json.dumps({**_valid_record(), "delta_ppl": {"L0": 0.5, "L1": 0.1, "L2": 1}}).encode(),
    json.dumps({**_valid_record(), "reference_ppl": -1}).encode(),
    json.dumps({**_valid_record(), "tokens": 0}).encode(),
    json.dumps({k: v for k, v in _valid_record().items() if k != "text_sha256"}).encode(),
    b'{"version": 1, "delta_ppl": {"L0": 0.0, "L1": NaN, "L2": Infinity}}',
], ids=["syntax", "bytes", "list", "version", "level-missing", "not-a-number", "L0-not-exact",
        "ppl", "tokens", "sha-missing", "non-finite"])
def test_load_of_a_bad_file_is_none_and_logged(tmp_path: Path, content: bytes,
                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / CALIBRATION_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=kv_calibration.__name__):
        assert kv_calibration.load(tmp_path) is None
    assert any(CALIBRATION_FILE in r.getMessage() for r in caplog.records)


def test_calibrate_without_its_text_says_why(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="calibration text"):
        kv_calibration.calibrate(tmp_path, texts=[tmp_path / "no-licence-here"])
    assert not (tmp_path / CALIBRATION_FILE).exists()


@pytest.mark.model
@pytest.mark.slow
def test_prepared_model_carries_its_measured_calibration(smollm2_folder: Path) -> None:
    from tests.engine.engine_process import prepared_model

    cal = kv_calibration.load(smollm2_folder)
    assert cal is not None, "ensure_prepared left no valid kv_calibration.json"
    assert cal.delta_ppl["L0"] == 0.0 and cal.observed_delta_ppl["L0"] == 0.0
    values = [*cal.delta_ppl.values(), *cal.observed_delta_ppl.values(), cal.reference_ppl]
    assert all(math.isfinite(v) for v in values)
    assert 1 < cal.reference_ppl < 1000 and 0 < cal.scored_tokens < cal.tokens
    # The KL figure cannot be negative; fewer bits cost more.
    assert 0 <= cal.delta_ppl["L1"] < cal.delta_ppl["L2"]
    # The raw perplexity change is noisy (the module says how much) but must agree with
    # the KL figure within its own standard error; a bug in either breaks that.
    for level in ("L1", "L2"):
        noise = 4 * cal.measured["observed_delta_ppl_stderr"][level] + 1e-3
        assert abs(cal.observed_delta_ppl[level] - cal.delta_ppl[level]) <= noise, cal
    assert cal.measured["tools"]["onnxruntime"] and cal.measured["seconds"] > 0
    assert cal.estimate({"L0": 10, "L2": 10}) == pytest.approx(cal.delta_ppl["L2"] / 2)

    # The second call is fast, silent and leaves the file as it was.
    stamp = (smollm2_folder / CALIBRATION_FILE).stat().st_mtime_ns
    started = time.monotonic()
    assert prepared_model() == smollm2_folder
    assert time.monotonic() - started < 5
    assert (smollm2_folder / CALIBRATION_FILE).stat().st_mtime_ns == stamp


@pytest.mark.model
@pytest.mark.slow
def test_a_model_prepared_before_calibration_gets_only_the_calibration(
        smollm2_folder: Path, tmp_path: Path) -> None:
    from inferos.engine.prepare import ensure_prepared

    # A copy of the prepared folder as an older version left it: no calibration file.
    old = tmp_path / smollm2_folder.name
    old.mkdir()
    for item in smollm2_folder.iterdir():
        if item.name != CALIBRATION_FILE:
            (old / item.name).symlink_to(item)
    said: list[str] = []
    assert ensure_prepared(cache_dir=tmp_path, progress=said.append) == old
    assert not any("preparing" in s for s in said), said  # the model was not rebuilt
    assert any(s.startswith("KV calibration:") for s in said), said
    assert kv_calibration.load(old) is not None

    said.clear()
    assert ensure_prepared(cache_dir=tmp_path, progress=said.append) == old
    assert said == []
