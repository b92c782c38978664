"""Where finished observations go: parsed into records, then fanned out to subscribers.

Subscribers (Prometheus metrics, the controller's stats window) must be quick and must not
raise into the data plane: a failing subscriber is counted and logged, never propagated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from inferos.proxy.observation import Observation
from inferos.proxy.record import RequestRecord, build_record

log = logging.getLogger(__name__)

Subscriber = Callable[[RequestRecord], None]


class Observer:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.errors = 0
        self.records = 0

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def finish(self, obs: Observation) -> RequestRecord | None:
        try:
            record = build_record(obs)
        except Exception:  # observation must never fail a request
            self.errors += 1
            log.exception("could not summarize request %s", obs.request_id)
            return None
        self.records += 1
        for subscriber in self._subscribers:
            try:
                subscriber(record)
            except Exception:
                self.errors += 1
                log.exception("record subscriber %r failed", subscriber)
        return record
