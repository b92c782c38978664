"""bench/llamacpp_kv_cost.py runs llama.cpp on the real model with every cache type.

The figures are the benchmark's to print (controller/cache_types.py holds them), not this
test's: it checks that every type of the table was measured against f16 in one run, that
the control row is there, and that the measurements move the way they must (f16 against
itself costs nothing; fewer bits diverge more).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from inferos.controller.cache_types import CACHE_TYPES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

NUMBER = r"\s*([-+]?[\d.]+)\s*"
ROW = re.compile(r"^\| (f16|f16, FA off|q8_0|q4_0)\s+\|\s*(\d+) \|"
                 + r"\|".join([NUMBER] * 8) + r"\|$")


def test_quick_run_measures_every_cache_type() -> None:
    pytest.importorskip("llama_cpp")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "llamacpp_kv_cost.py"),
                          "--quick"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    rows = {m.group(1): [int(m.group(2)), *map(float, m.groups()[2:])]
            for m in map(ROW.match, run.stdout.splitlines()) if m}
    assert set(rows) == {"f16, FA off", *(c.name for c in CACHE_TYPES)}, run.stdout
    assert [rows[c.name][0] for c in CACHE_TYPES] == [c.ggml_id for c in CACHE_TYPES]
    # columns: id, PPL, dPPL, se, ratio, KL mean, dPPL (KL), se, seconds
    ref = rows["f16"]
    assert 1 < ref[1] < 1000 and ref[2] == 0 and ref[5] == 0 and ref[6] == 0
    for name in ("f16, FA off", "q8_0", "q4_0"):
        ppl, _, se, ratio, kl, implied, _, seconds = rows[name][1:]
        assert ppl > 1 and se > 0 and ratio > 0 and kl > 0 and implied > 0 and seconds > 0
    assert rows["q8_0"][5] < rows["q4_0"][5], run.stdout  # KL mean
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("controller/cache_types.py")]
    assert len(lines) == len(CACHE_TYPES) - 1, run.stdout
