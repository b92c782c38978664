"""A client that hangs up when the test says: raw asyncio streams, so that closing before
the response, after its head or after a few SSE events is exactly that, with no client
library between (test equipment)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


async def open_chat(url: str, body: dict[str, Any]
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Sends ``POST /api/v1/chat/completions`` to ``url`` (http://host:port)."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /api/v1/chat/completions HTTP/1.1\r\n"
                 + f"Host: {where.hostname}:{where.port}\r\n".encode()
                 + b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    return reader, writer


async def read_events(reader: asyncio.StreamReader, count: int) -> tuple[bytes, int]:
    """The status line, then up to ``count`` SSE ``data:`` lines (fewer at end of stream)."""
    status = await reader.readline()
    seen = 0
    while seen < count:
        line = await reader.readline()
        if not line:
            break
        if b"data: " in line:
            seen += 1
    return status, seen


def hang_up(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Closes the connection: a reset (RST, the process died) or an orderly FIN."""
    if reset:
        writer.transport.abort()
    else:
        writer.close()
