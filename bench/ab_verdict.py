"""What the A/B run's figures say (bench/ab.py): medians and spreads, the seed's SLO
criteria with their "3 of 4" verdict, and the regression gate. Pure functions of
``results.json``'s content, so a verdict is always computed from figures, never written.

The criteria, each ON (a profile) against OFF (the plain engine, or the user's backend
addressed directly):

  tps        aggregate tokens/s, geometric mean over the grid's cells of ON/OFF; >= 1.3
  ftl        time to first token p50, geometric mean over the grid's cells and the chat's
             turns after the first of ON/OFF; <= 0.8 (FTL -20%)
  memory     peak resident memory of every process of the side over the whole run, ON/OFF;
             <= 0.4 (memory -60%); not met where either side could not be measured
  fallback   a controller fault injected mid-run: passthrough within 1 s, 0 failed requests

A cell's spread is half its runs' range over their median. The gate flags a cell whose
aggregate tokens/s fell, or whose FTL p50 rose, by more than 5% beyond the larger of the
two runs' spreads.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

__all__ = ["CRITERIA", "Regression", "gate", "median", "ratio_rows", "slo", "spread"]

TPS_TARGET = 1.3
FTL_TARGET = 0.8
MEMORY_TARGET = 0.4
GATE_TOLERANCE = 0.05
CRITERIA = ("tps", "ftl", "memory", "fallback")
# (metric, higher is better) the gate watches
GATED = (("tps", True), ("ftl_p50_ms", False))


def _values(runs: list[dict[str, Any]], metric: str) -> list[float]:
    return [float(v) for run in runs if (v := run.get(metric)) is not None]


def median(runs: list[dict[str, Any]], metric: str) -> float | None:
    values = _values(runs, metric)
    return statistics.median(values) if values else None


def spread(runs: list[dict[str, Any]], metric: str) -> float | None:
    """Half the range over the median (0 for a single run); None with no value."""
    values = _values(runs, metric)
    if not values:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / 2 / middle if middle else 0.0


def _geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(map(math.log, values))) if values else None


def _runs(results: dict[str, Any], key: str, side: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = results["cells"].get(key, {}).get("sides", {}).get(side, [])
    return runs


def ratio_rows(results: dict[str, Any], keys: list[str], side: str, metric: str
               ) -> list[tuple[str, float]]:
    """(cell, median ON / median OFF) for each cell of ``keys`` where both were measured."""
    rows = []
    for key in keys:
        on, off = median(_runs(results, key, side), metric), median(_runs(results, key, "off"),
                                                                    metric)
        if on is not None and off:
            rows.append((key, on / off))
    return rows


def _peak_rss(results: dict[str, Any], side: str) -> int | None:
    peaks = [run["memory"]["rss_bytes"] for cell in results["cells"].values()
             for run in cell["sides"].get(side, []) if run.get("memory")]
    if not peaks or any(p is None for p in peaks):
        return None
    return max(peaks)


def slo(results: dict[str, Any], side: str) -> dict[str, Any]:
    """The four criteria for profile ``side`` against off, and the "3 of 4" verdict."""
    cells = results["cells"]
    grid = [k for k, c in cells.items() if c["workload"] == "grid"]
    later_turns = [k for k, c in cells.items()
                   if c["workload"] == "chat" and c["params"].get("turn", 1) > 1]
    tps = _geomean([r for _, r in ratio_rows(results, grid, side, "tps")])
    ftl = _geomean([r for _, r in ratio_rows(results, grid + later_turns, side, "ftl_p50_ms")])
    on_rss, off_rss = _peak_rss(results, side), _peak_rss(results, "off")
    memory = on_rss / off_rss if on_rss is not None and off_rss else None
    fallback = results.get("fallback") or {}
    rows = [
        {"criterion": "tps", "target": f">= x{TPS_TARGET}", "measured": tps,
         "met": tps is not None and tps >= TPS_TARGET,
         "what": "aggregate tok/s ON/OFF, geometric mean over the grid"},
        {"criterion": "ftl", "target": f"<= x{FTL_TARGET} (FTL -20%)", "measured": ftl,
         "met": ftl is not None and ftl <= FTL_TARGET,
         "what": "FTL p50 ON/OFF, geometric mean over the grid and the chat's later turns"},
        {"criterion": "memory", "target": f"<= x{MEMORY_TARGET} (memory -60%)",
         "measured": memory, "met": memory is not None and memory <= MEMORY_TARGET,
         "what": "peak RSS of every process ON/OFF over the run"},
        {"criterion": "fallback", "target": "<= 1000 ms, 0 failed",
         "measured": fallback.get("to_passthrough_ms"), "met": bool(fallback.get("met")),
         "what": f"fault to passthrough, ms; failed requests {fallback.get('failed')}"},
    ]
    met = sum(1 for row in rows if row["met"])
    return {"side": side, "criteria": rows, "met": met,
            "verdict": f"{'met' if met >= 3 else 'not met'} ({met} of 4)"}


@dataclass(frozen=True)
class Regression:
    key: str
    side: str
    metric: str
    baseline: float
    current: float
    change: float     # relative, signed: the way that is worse is positive
    allowed: float    # tolerance + spread

    def describe(self) -> str:
        return (f"{self.key} [{self.side}] {self.metric}: {self.baseline:.2f} -> "
                f"{self.current:.2f} ({self.change:+.1%} worse, {self.allowed:.1%} allowed)")


def gate(current: dict[str, Any], baseline: dict[str, Any],
         tolerance: float = GATE_TOLERANCE) -> list[Regression]:
    """The cells of ``current`` that are worse than in ``baseline`` beyond tolerance and
    spread; cells or sides only one of them has are not compared."""
    found = []
    for key, cell in current["cells"].items():
        for side, runs in cell["sides"].items():
            before = _runs(baseline, key, side)
            if not before:
                continue
            for metric, higher in GATED:
                new, old = median(runs, metric), median(before, metric)
                if new is None or not old:
                    continue
                change = (old - new) / old if higher else (new - old) / old
                allowed = tolerance + max(spread(runs, metric) or 0.0,
                                          spread(before, metric) or 0.0)
                if change > allowed:
                    found.append(Regression(key, side, metric, old, new, change, allowed))
    return found
