"""One streamed generation as a client measures it, on any OpenAI-shaped server.

``generate(client, side, "completions", body)`` sends ``body`` with ``stream: true`` and
``stream_options.include_usage`` and returns a ``Stream``: when it was sent, when each
chunk with content arrived, the text, the server's own token count (``usage``, which
counts tokens that decode to nothing or arrive several to a chunk) and its ``timings``
(llama.cpp's; the embedded engine adds ``queue_ms``, ``draft_n``, ``draft_n_accepted``).

    TTFT  ``stream.ttft``: from sending to the first chunk with content (queue included)
    TPOT  ``stream.tpot``: (last chunk - first chunk) / (tokens - 1)

A chunk is stamped as its line is read, before it is decoded, and nothing else is done
per chunk: with eight streams in one event loop on two cores, the client's own cost is
part of what it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["BenchError", "Side", "Stream", "generate", "percentile"]


class BenchError(RuntimeError):
    """A server refused a request, or answered one with nothing."""


@dataclass(frozen=True)
class Side:
    """A server as the client addresses it."""

    label: str
    url: str
    model: str
    prefix: str  # "/api/v1" through Infer-OS's proxy (Lemonade's paths), "/v1" on llama-server


@dataclass
class Stream:
    sent: float = 0.0
    stamps: list[float] = field(default_factory=list)  # arrival of each chunk with content
    pieces: list[str] = field(default_factory=list)
    usage_tokens: int | None = None  # None: the stream was closed before its usage came
    prompt_tokens: int | None = None  # the server's count of the prompt, from usage
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.stamps)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.sent

    @property
    def tpot(self) -> float | None:
        if self.tokens < 2 or len(self.stamps) < 2:
            return None
        return (self.stamps[-1] - self.stamps[0]) / (self.tokens - 1)

    @property
    def end(self) -> float:
        return self.stamps[-1] if self.stamps else self.sent


def _piece(choice: dict[str, Any]) -> str | None:
    if "text" in choice:  # completions
        text: str | None = choice["text"]
        return text
    delta = choice.get("delta") or {}  # chat: the first delta carries only the role
    content: str | None = delta.get("content")
    return content


async def generate(client: httpx.AsyncClient, side: Side, route: str, body: dict[str, Any],
                   stream: Stream | None = None, *,
                   stop: asyncio.Event | None = None) -> Stream:
    """Streams ``body`` to ``route`` (``completions``, ``chat/completions``) at
    temperature 0 unless it says otherwise; fills ``stream`` as chunks arrive, so that
    another task can watch its progress. ``stop``: once it is set, the client goes away
    (closes the connection) at the next chunk."""
    stream = stream or Stream()
    body = {"model": side.model, "temperature": 0, **body, "stream": True,
            "stream_options": {"include_usage": True}}
    stream.sent = time.perf_counter()
    async with client.stream("POST", f"{side.url}{side.prefix}/{route}", json=body) as answer:
        if answer.status_code != 200:
            raise BenchError(f"{side.label}: {answer.status_code} "
                             f"{(await answer.aread())[:500]!r}")
        async for line in answer.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            event = json.loads(line[6:])
            if "error" in event:
                raise BenchError(f"{side.label}: {event['error']}")
            for choice in event.get("choices") or ():
                piece = _piece(choice)
                if piece:
                    stream.stamps.append(now)
                    stream.pieces.append(piece)
            if event.get("usage"):
                stream.usage_tokens = int(event["usage"]["completion_tokens"])
                if event["usage"].get("prompt_tokens") is not None:
                    stream.prompt_tokens = int(event["usage"]["prompt_tokens"])
            if event.get("timings"):
                stream.timings = event["timings"]
            if stop is not None and stop.is_set():
                break
    if not stream.stamps:
        raise BenchError(f"{side.label}: a stream produced no text")
    return stream


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
