"""What the hot path records about one request: timestamps and a bounded copy of the bytes.

Nothing here parses. The relay calls ``on_chunk`` once per upstream chunk (an append and a
clock read); ``inferos.proxy.record`` turns the copy into a ``RequestRecord`` after the
response has been delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Outcomes of a forwarded request, from the proxy's point of view.
OK = "ok"
CLIENT_DISCONNECT = "client_disconnect"
UPSTREAM_DISCONNECT = "upstream_disconnect"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
BODY_TOO_LARGE = "body_too_large"


@dataclass(slots=True)
class Observation:
    method: str
    path: str
    route: str
    max_bytes: int
    request_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    request_body: bytearray = field(default_factory=bytearray)
    request_truncated: bool = False
    status: int = 0
    content_type: str = ""
    response_at: float | None = None
    chunks: list[bytes] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    observed_bytes: int = 0
    response_truncated: bool = False
    ended: float | None = None
    outcome: str = OK

    def on_request_chunk(self, chunk: bytes) -> None:
        if self.request_truncated:
            return
        if len(self.request_body) + len(chunk) > self.max_bytes:
            self.request_truncated = True
            return
        self.request_body += chunk

    def on_response(self, status: int, content_type: str) -> None:
        self.response_at = time.perf_counter()
        self.status = status
        self.content_type = content_type

    def on_chunk(self, chunk: bytes) -> None:
        # Hot path: one clock read and two appends; bytes objects are shared, not copied.
        self.chunk_times.append(time.perf_counter())
        if self.response_truncated:
            return
        self.observed_bytes += len(chunk)
        if self.observed_bytes > self.max_bytes:
            self.response_truncated = True
            return
        self.chunks.append(chunk)

    def finish(self, outcome: str | None = None) -> None:
        self.ended = time.perf_counter()
        if outcome is not None:
            self.outcome = outcome
