"""Finding a backend when none is configured: Lemonade's default ports, newest first."""

from __future__ import annotations

import httpx

# v10.1+ listens on 13305; older C++ and Python servers on 8000.
LEMONADE_DEFAULTS = ("http://127.0.0.1:13305", "http://127.0.0.1:8000")
# /api/v1/health exists on every Lemonade version (the Python server has no bare /v1).
HEALTH_PATH = "/api/v1/health"


def answers(origin: str, timeout_s: float = 1.0) -> bool:
    try:
        response = httpx.get(origin + HEALTH_PATH, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def find_lemonade(candidates: tuple[str, ...] = LEMONADE_DEFAULTS) -> str | None:
    for origin in candidates:
        if answers(origin):
            return origin
    return None
