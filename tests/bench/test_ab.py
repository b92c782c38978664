"""``inferos bench ab`` (bench/ab.py): the verdict and the gate as functions of the figures,
and the quick run end to end on the real model (every file, every cell, the fault).

The verdict tests build results by hand, the way results.json holds them, and move one
figure across a target to see the verdict follow it; nothing asserts a speed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ab_report import PLOTS, write_outputs  # noqa: E402
from bench.ab_verdict import gate, slo  # noqa: E402

MIB = 1024 * 1024


def _run(tps: float, ftl: float, rss: int | None, repeat: int = 0) -> dict[str, Any]:
    return {"tps": tps, "stream_tps": tps, "ftl_p50_ms": ftl, "ftl_p95_ms": ftl,
            "e2e_p95_ms": ftl * 3, "tokens": 32, "prompt_tokens": 128, "streams": 1,
            "errors": 0, "repeat": repeat, "memory": {"rss_bytes": rss, "processes": {}},
            "kv_bytes": {"live": 1 * MIB, "L0": 0, "L1": 0, "L2": 0, "L3": 0},
            "reported": {"delta_ppl_est": None, "spec_accept": None}}


def _results(on_tps: float = 60.0, on_ftl: float = 50.0, on_rss: int | None = 300 * MIB,
             fallback_ms: float | None = 20.0, failed: int = 0) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for length in (128, 512):
        for batch in (1, 4):
            cells[f"grid/L{length}/B{batch}"] = {
                "workload": "grid", "params": {"L": length, "batch": batch},
                "sides": {"off": [_run(40.0, 100.0, 1000 * MIB, r) for r in range(3)],
                          "balanced": [_run(on_tps * (1 + 0.01 * r), on_ftl, on_rss, r)
                                       for r in range(3)]}}
    for turn in (1, 2):
        cells[f"chat/turn{turn}"] = {
            "workload": "chat", "params": {"turn": turn},
            "sides": {"off": [_run(40.0, 100.0, 1000 * MIB)],
                      "balanced": [_run(40.0, on_ftl, on_rss)]}}
    return {"schema": 1, "sides": ["off", "balanced"], "cells": cells,
            "machine": {"cpus": 2}, "run": {"target": "test", "repeats": 3,
                                             "duration_s": 1.0, "quick": True},
            "fallback": {"side": "balanced", "to_passthrough_ms": fallback_ms,
                         "failed": failed,
                         "met": fallback_ms is not None and fallback_ms <= 1000 and not failed}}


def _met(results: dict[str, Any]) -> dict[str, bool]:
    return {row["criterion"]: row["met"] for row in slo(results, "balanced")["criteria"]}


def test_each_criterion_follows_its_figure() -> None:
    assert _met(_results()) == {"tps": True, "ftl": True, "memory": True, "fallback": True}
    assert slo(_results(), "balanced")["verdict"] == "met (4 of 4)"
    # TPS x1.5 on the grid passes (above), x1.25 does not
    assert not _met(_results(on_tps=50.0))["tps"]
    # FTL 0.79 of off passes, 0.85 does not
    assert _met(_results(on_ftl=79.0))["ftl"]
    assert not _met(_results(on_ftl=85.0))["ftl"]
    assert not _met(_results(on_rss=500 * MIB))["memory"]
    assert not _met(_results(on_rss=None))["memory"]  # unmeasured is not met
    assert not _met(_results(fallback_ms=1500.0))["fallback"]
    assert not _met(_results(failed=1))["fallback"]


def test_three_of_four_is_the_verdict() -> None:
    assert slo(_results(on_rss=500 * MIB), "balanced")["verdict"] == "met (3 of 4)"
    two = slo(_results(on_rss=500 * MIB, on_tps=41.0), "balanced")
    assert two["met"] == 2 and two["verdict"] == "not met (2 of 4)"


def test_the_ratio_is_computed_from_the_medians() -> None:
    tps = next(r for r in slo(_results(on_tps=80.0), "balanced")["criteria"]
               if r["criterion"] == "tps")
    assert tps["measured"] == pytest.approx(80.8 / 40.0)  # the median run is r=1


def test_the_gate_passes_a_repeat_and_fails_an_injected_regression() -> None:
    current = _results()
    assert gate(current, copy.deepcopy(current)) == []
    baseline = copy.deepcopy(current)
    for run in baseline["cells"]["grid/L512/B4"]["sides"]["balanced"]:
        run["tps"] *= 1.2  # the baseline was 20% faster: now is a regression
    found = gate(current, baseline)
    assert [(r.key, r.side, r.metric) for r in found] == [("grid/L512/B4", "balanced", "tps")]
    # within 5% plus the spread of the runs it is not
    for run in baseline["cells"]["grid/L512/B4"]["sides"]["balanced"]:
        run["tps"] = run["tps"] / 1.2 * 1.05
    assert gate(current, baseline) == []


def test_the_gate_watches_ftl_rising() -> None:
    current = _results(on_ftl=70.0)
    assert [(r.key, r.metric) for r in gate(current, _results(on_ftl=50.0))
            if r.key == "grid/L128/B1"] == [("grid/L128/B1", "ftl_p50_ms")]


def test_the_report_shows_the_computed_verdict(tmp_path: Path) -> None:
    results = _results(on_rss=500 * MIB)
    write_outputs(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    first_table = report.split("## ", 2)[1]
    assert "met (3 of 4)" in first_table and "| memory |" in first_table
    assert "x0.50" in first_table  # memory ON/OFF = 500/1000
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text()) == results


# -- the quick run, end to end ------------------------------------------------------------
@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_quick_run_produces_every_file_and_a_gate(tmp_path: Path) -> None:
    from tests.engine.engine_process import prepared_model

    prepared_model()
    out = tmp_path / "ab"
    run = subprocess.run([sys.executable, "-m", "inferos.cli", "bench", "ab", "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=1400,
                         check=False, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    for name in ("report.md", "report.html", "results.json", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["sides"] == ["off", "balanced"]
    keys = set(results["cells"])
    assert {"grid/L128/B1", "grid/L128/B2", "grid/L512/B1", "grid/L512/B2", "chat/turn1",
            "chat/turn2", "grounded/edit", "mixed"} <= keys
    for key, cell in results["cells"].items():
        for side in ("off", "balanced"):
            (only,) = cell["sides"][side]
            assert only["errors"] == 0 and only["tokens"] > 0, (key, side, only)
            assert only["tps"] > 0 and only["ftl_p50_ms"] > 0
            assert only["memory"]["rss_bytes"] > 0
            assert only["kv_bytes"]["live"] is not None
    # off is the plain engine, alone; on is serve and its engine
    grid = results["cells"]["grid/L128/B2"]["sides"]
    assert set(grid["off"][0]["memory"]["processes"]) == {"inferos engine"}
    assert set(grid["balanced"][0]["memory"]["processes"]) == {"inferos serve",
                                                                "inferos engine"}
    # off has no controller: nothing is reported for it, nothing estimated
    assert grid["off"][0]["reported"] == {"delta_ppl_est": None, "spec_accept": None}
    fallback = results["fallback"]
    assert fallback["failed"] == 0 and fallback["to_passthrough_ms"] is not None, fallback
    assert fallback["health_passthrough_ms"] is not None
    verdict = slo(results, "balanced")["verdict"]
    assert verdict in (out / "report.md").read_text().split("## ", 2)[1]
    assert verdict in run.stderr

    # the gate: the same figures pass; a baseline 30% faster on one cell fails, and the
    # report names the cell
    same = subprocess.run([sys.executable, "-m", "inferos.cli", "bench", "ab", "--out",
                           str(tmp_path / "same"), "--compare", str(out / "results.json"),
                           "--baseline", str(out / "results.json")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert same.returncode == 0, same.stderr
    faster = copy.deepcopy(results)
    for r in faster["cells"]["grid/L512/B2"]["sides"]["balanced"]:
        r["tps"] *= 1.3
    (tmp_path / "faster.json").write_text(json.dumps(faster))
    worse = subprocess.run([sys.executable, "-m", "inferos.cli", "bench", "ab", "--out",
                            str(tmp_path / "worse"), "--compare", str(out / "results.json"),
                            "--baseline", str(tmp_path / "faster.json")],
                           capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert worse.returncode == 1, worse.stderr
    assert "grid/L512/B2 [balanced] tps" in worse.stderr
    assert "grid/L512/B2" in (tmp_path / "worse" / "report.md").read_text().split(
        "Regression gate")[1]


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    from bench.ab_report import README_BEGIN, README_END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{README_BEGIN}\nold\n{README_END}\n\nafter\n")
    results = _results()
    results["run"]["started"] = "2026-12-03T06:00:00+00:00"
    update_readme(results, readme, tmp_path / "docs" / "ab")
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n" + README_BEGIN)
    assert text.endswith(README_END + "\n\nafter\n")
    assert "old" not in text and "met (4 of 4)" in text
    assert "(docs/ab/report.md)" in text and "(docs/ab/tps_vs_L.png)" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError):
        update_readme(results, readme, tmp_path / "docs" / "ab")


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_quick_run_against_a_backend_the_user_runs(tmp_path: Path) -> None:
    """--upstream: OFF is the backend addressed directly, ON inferos serve in front of it;
    here the backend is a Lemonade-compatible ``inferos engine`` the test starts, found by
    its port for its memory."""
    from tests.engine.engine_process import MODEL, engine_process, prepared_model

    prepared_model()
    with engine_process(tmp_path, "--ctx-size", "2048") as backend:
        out = tmp_path / "ab"
        run = subprocess.run([sys.executable, "-m", "inferos.cli", "bench", "ab", "--quick",
                              "--out", str(out), "--upstream", backend.url],
                             capture_output=True, text=True, timeout=1400, check=False,
                             cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert backend.url in results["run"]["target"] and MODEL in results["run"]["target"]
    grid = results["cells"]["grid/L128/B2"]["sides"]
    (off,), (on,) = grid["off"], grid["balanced"]
    assert off["errors"] == 0 and on["errors"] == 0 and off["tokens"] > 0
    # the backend's process counts on both sides; serve's only on
    assert set(off["memory"]["processes"]) == {"inferos engine"}
    assert set(on["memory"]["processes"]) == {"inferos serve", "inferos engine"}
    assert results["fallback"]["failed"] == 0
