"""Admission: where requests wait, bounded, while the backend is switched or load is shed.

Two controls, both set by the controller from its own thread and read by the data plane:

- the *gate*: closed while a backend reloads in place (Lemonade ``/load``); arriving
  requests wait for it to reopen instead of failing against a restarting server;
- the *limit*: at most N generations at once, lowered when the machine runs hot or short
  of memory.

Every wait is bounded by ``max_wait_s``: past it the request goes on regardless, so a
controller that dies with the gate closed cannot hang a client. Passthrough mode skips
admission entirely.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class Admission:
    def __init__(self, max_wait_s: float = 120.0) -> None:
        self.max_wait_s = max_wait_s
        self.limit: int | None = None
        self.active = 0
        self.waited = 0
        self.wait_timeouts = 0
        self._open = asyncio.Event()
        self._open.set()
        self._slot_freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- controller side (any thread) ------------------------------------------------
    def close_gate(self) -> None:
        self._call(self._open.clear)

    def open_gate(self) -> None:
        self._call(self._open.set)

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit
        self._call(self._slot_freed.set)

    def _call(self, fn: object) -> None:
        assert callable(fn)
        if self._loop is None or self._loop.is_closed():
            fn()
            return
        with contextlib.suppress(RuntimeError):  # loop already stopped: nothing waits
            self._loop.call_soon_threadsafe(fn)

    @property
    def gate_open(self) -> bool:
        return self._open.is_set()

    # -- data plane --------------------------------------------------------------------
    async def enter(self, generation: bool) -> None:
        if self._open.is_set() and (not generation or self.limit is None
                                    or self.active < self.limit):
            self.active += generation
            return
        self.waited += 1
        deadline = time.monotonic() + self.max_wait_s
        if not self._open.is_set():
            if not await self._wait(self._open, deadline):
                self.wait_timeouts += 1
        while generation and self.limit is not None and self.active >= self.limit:
            self._slot_freed.clear()
            if not await self._wait(self._slot_freed, deadline):
                self.wait_timeouts += 1
                break
        self.active += generation

    def leave(self, generation: bool) -> None:
        if generation:
            self.active -= 1
            self._slot_freed.set()

    @staticmethod
    async def _wait(event: asyncio.Event, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return event.is_set()
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return False
        return True
