"""bench/live_policy.py starts the real engine and times policy round trips; this checks
only that the harness works: every row measured with positive figures, and a verdict
printed. Whether the 100 ms target is met is the benchmark's to say, not this test's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROW = re.compile(r"^\| ([a-z ,-]+?)\s+\|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|$")
ROWS = {"ack, idle", "visible in stats, idle", "re-leveled, idle", "ack, generating",
        "visible in stats, generating", "agent end to end, idle"}


def test_quick_run_measures_every_row(smollm2_folder: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "live_policy.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, run.stdout.splitlines()) if m}
    assert set(rows) == ROWS, run.stdout
    for name, (n, p50, p95, top) in rows.items():
        assert int(n) == 10, (name, run.stdout)
        assert 0 < float(p50) <= float(p95) <= float(top), (name, run.stdout)
    assert re.search(r"^target <= 100 ms: (met|not met) \(", run.stdout, re.M), run.stdout
