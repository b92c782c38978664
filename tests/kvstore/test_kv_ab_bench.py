"""bench/kv_ab.py runs on the real model, both sides in one run, and prints its figures.

The targets are the benchmark's to print, not this test's: it checks that the chat ran on
every engine, that reuse happened only where it is on, and that the quality table and the
target lines are there with numbers that move the right way (a smaller host pool, fewer
bytes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.slow]


def _cells(out: str, name: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"| {name} "))
    return [c.strip() for c in line.split("|")[2:-1]]


def test_bench_runs_on_and_off_and_prints_targets() -> None:
    from tests.engine.engine_process import prepared_model

    folder = prepared_model()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "kv_ab.py"), "--quick", "--model-dir",
         str(folder), "--conversations", "2", "--turns", "2", "--message-tokens", "100",
         "--ppl-tokens", "512", "--fractions", "0.5", "0.35"],
        capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    off, on = (_cells(out, name) for name in ("OFF", "ON"))
    assert off[3].startswith("0 /") and not on[3].startswith("0 /")
    assert float(off[4]) == 1.0 and float(on[5]) < 1.0  # turn 2 reused turn 1's KV
    parked = {m.group(1): int(m.group(2).replace(",", ""))
              for m in re.finditer(r"^  (ON(?:, tight)?)\s+([\d,]+) B", out, re.M)}
    assert 0 < parked["ON, tight"] < parked["ON"]
    exact = _cells(out, "exact (no pressure)")
    # parked in float16 (issue 11): the bytes of FP16, a dPPL that rounds to 0
    assert float(exact[0]) == 0.0 and float(exact[2]) == 1.0
    assert float(_cells(out, "host pool 35% of FP16")[2]) <= 0.35
    assert "TTFT p50, chat, ON vs OFF" in out
    assert len(re.findall(r"parked KV at dPPL <= ", out)) == 2
