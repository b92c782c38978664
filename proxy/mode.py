"""Whether the proxy observes or only forwards, read lock-free on every request.

Two independent reasons lead to passthrough: the user asked for it (``--passthrough``,
``INFEROS_PASSTHROUGH=1``, ``POST /v1/policy {"mode":"passthrough"}``), or the fail-safe
tripped (the control plane failed). Each is a single attribute assignment, atomic under the
GIL and within one event loop, so the data plane never takes a lock to read it.
"""

from __future__ import annotations

import time


class ProxyMode:
    def __init__(self, *, forced: bool = False) -> None:
        self.forced = forced
        self.failsafe_reason: str | None = None
        self.failsafe_since: float | None = None

    @property
    def passthrough(self) -> bool:
        return self.forced or self.failsafe_reason is not None

    def trip(self, reason: str) -> None:
        if self.failsafe_reason is None:
            self.failsafe_since = time.monotonic()
        self.failsafe_reason = reason

    def clear(self) -> None:
        self.failsafe_reason = None
        self.failsafe_since = None

    def describe(self) -> str:
        if self.forced:
            return "passthrough"
        if self.failsafe_reason is not None:
            return "failsafe"
        return "observe"
