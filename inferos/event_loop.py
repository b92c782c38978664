"""Running the data plane's event loop: uvloop where it exists, asyncio's otherwise.

uvloop (libuv) roughly halves the per-chunk cost of relaying small SSE writes, which is
most of what the proxy does; Windows has no uvloop and gets the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
