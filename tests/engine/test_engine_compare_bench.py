"""bench/engine_compare.py runs the three runtimes on the real model and prints a row for each.

Speed targets are the benchmark's to print, not this test's: it checks only that the
harness works — every runtime measured at every length with positive numbers, ratios
printed, and genai (the same ONNX graph, greedy) producing the same tokens as ours.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROW = re.compile(r"^\| (ours \(engine core\)|onnxruntime-genai|llama\.cpp)\s+\| (\S+)\s+"
                 r"\|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+(\d+) \|\s+(\d+) \|\s+([\d.]+) \|$")


def test_quick_run_measures_every_runtime(smollm2_folder: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("onnxruntime_genai")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "engine_compare.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr

    rows = [m.groups() for m in map(ROW.match, run.stdout.splitlines()) if m]
    measured = {(name, int(length)) for name, _, length, *_ in rows}
    assert measured == {(name, n) for name in ("ours (engine core)", "onnxruntime-genai",
                                               "llama.cpp") for n in (128, 512)}, run.stdout
    for name, weights, _, prefill, decode, tokens, rss, _ in rows:
        assert weights == ("Q4_1" if name == "llama.cpp" else "fp32")
        assert float(prefill) > 0 and float(decode) > 0, run.stdout
        assert 2 <= int(tokens) <= 16 and int(rss) > 0, run.stdout

    ratios = [ln for ln in run.stdout.splitlines() if re.match(r"^\|\s+(128|512) \|", ln)]
    assert len(ratios) == 2 and all(float(x) > 0 for ln in ratios
                                    for x in re.findall(r"[\d.]+", ln.split("|", 2)[2]))
    # genai runs the very graph ours runs, greedily: the same tokens, or one is broken.
    genai = next(ln for ln in run.stdout.splitlines() if ln.startswith("onnxruntime-genai vs"))
    assert "leading greedy tokens equal 128: 16/16, 512: 16/16" in genai, run.stdout
