"""bench/rss_growth.py end to end on the real model, small: it drives the engine in
process until its (tiny) host pool is full, samples memory and prints its summary. The
slope is the benchmark's to measure over hundreds of requests, not this test's: only that
the figures are there, that the pool filled, and that the engine gave its free heap back
after generations (the fix the bench measures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def test_a_small_run_prints_its_figures_and_trims() -> None:
    from tests.engine.engine_process import prepared_model

    folder = prepared_model()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rss_growth.py"), "--model", str(folder),
         "--requests", "24", "--warmup", "2", "--sample-every", "1", "--max-prompt", "200",
         "--host-pool-bytes", "2000000"],
        capture_output=True, text=True, timeout=280, check=False, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.splitlines()[-1].removeprefix("summary: "))
    assert summary["requests"] == 24
    assert summary["fitted_samples"] >= 1  # the host pool filled within the run
    assert set(summary["slope_mib_per_100_requests"]) >= {"rss", "unbudgeted"}
    assert summary["end_mib"]["rss"] > 0
    assert summary["heap_trims"]["count"] >= 1
