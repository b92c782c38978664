"""bench/kv_quality.py runs on the real model and its table says what its settings are.

Quality targets are the benchmark's to print, not this test's; it only checks that the
harness runs and that its measurements move the way they must (more bits, less
divergence; re-rotated eviction closer than eviction with stale positions).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.slow]


def _row(out: str, name: str) -> list[float]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"| {name} "))
    cells = line.split("|", 2)[2]
    return [float(x.replace(",", "")) for x in re.findall(r"[-+]?[\d,]*\.?\d+", cells)]


def test_harness_runs_and_orders_settings() -> None:
    pytest.importorskip("inferos.engine.prepare", reason="the engine core prepares the model")
    from tests.engine.engine_process import prepared_model

    folder = prepared_model()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "kv_quality.py"), "--model-dir", str(folder),
         "--tokens", "512", "--evict", "0.5", "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    ref_ppl, ref_d, ref_kl, *_ = _row(run.stdout, "fp32 KV (reference)")
    assert ref_d == 0 and ref_kl == 0 and 1 < ref_ppl < 100
    int8 = _row(run.stdout, "int8")
    int4 = _row(run.stdout, "int4")
    assert int8[2] < int4[2]  # KL mean
    assert int8[-1] > int4[-1]  # bytes vs FP16
    rerotated = _row(run.stdout, "evict 50%, keys re-rotated")
    stale = _row(run.stdout, "evict 50%, old positions")
    assert rerotated[2] < stale[2]
