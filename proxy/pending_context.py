"""Request facts the proxy hands to the controller, without waiting and without parsing.

The data plane appends the raw request body (the bounded copy observation already keeps)
and the concurrency it saw to a bounded deque; the controller drains it on its own thread
and derives the run-context (model, prompt tokens, max_tokens, stream). When the controller
is slow or gone the oldest facts are dropped and counted, so memory stays bounded and the
data plane never blocks. ``deque.append`` with ``maxlen`` is atomic under the GIL.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestFacts:
    route: str
    body: bytes
    concurrency: int
    at: float = field(default_factory=time.time)


class PendingContexts:
    def __init__(self, maxlen: int = 1024) -> None:
        self._items: collections.deque[RequestFacts] = collections.deque(maxlen=maxlen)
        self.posted = 0
        self.dropped = 0

    def post(self, facts: RequestFacts) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(facts)
        self.posted += 1

    def drain(self) -> list[RequestFacts]:
        out = []
        while True:
            try:
                out.append(self._items.popleft())
            except IndexError:
                return out

    def __len__(self) -> int:
        return len(self._items)
