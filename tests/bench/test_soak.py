"""bench/soak.py end to end for a few seconds of traffic: it starts ``inferos serve`` on
the embedded engine, drives every kind of request, samples both processes and prints the
error counts and slopes. Whether RSS is flat is the benchmark's to say over an hour, not
this test's: no slope or time is asserted, only that the fields are there and that no
outcome was unexpected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_short_soak_prints_its_figures_and_no_unexpected_outcome() -> None:
    from tests.engine.engine_process import prepared_model

    prepared_model()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.3",
         "--sample-s", "2", "--clients", "3", "--max-tokens", "8",
         "--host-pool-bytes", "8MiB"],
        capture_output=True, text=True, timeout=540, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "unexpected outcomes: 0" in out
    assert "RSS slope window: " in out
    summary = json.loads(out.splitlines()[-1].removeprefix("summary: "))
    assert summary["unexpected_total"] == 0 and summary["requests"] > 0
    assert summary["samples"] >= 3
    assert set(summary["processes"]) == {"serve", "engine"}
    for process in summary["processes"].values():
        assert {"start_mib", "end_mib", "max_mib", "slope_mib_per_hour"} <= set(process)
        assert process["end_mib"] > 0
    assert summary["host_pool_mib"] == 8.0  # the live policy reached the engine
    engine = summary["processes"]["engine"]
    assert "unbudgeted_slope_mib_per_hour" in engine and engine["over_budget_samples"] == 0
    assert sum(summary["expected"].values()) == summary["requests"]
