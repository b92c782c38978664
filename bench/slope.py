"""The least-squares slope of memory samples, shared by bench/soak.py (per hour) and
bench/rss_growth.py (per 100 requests)."""

from __future__ import annotations

from collections.abc import Sequence


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """dy/dx of the best line through ``points``; None under 3 points or with every x equal."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var
