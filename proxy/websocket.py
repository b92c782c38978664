"""WebSocket upgrades relayed both ways (Lemonade's ``/realtime`` and ``/logs/stream``).

Messages are relayed frame for frame (text as text, binary as binary); a close on either
side closes the other with the same code. Observation only counts the session.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web

from inferos.proxy import errors
from inferos.proxy.forward import upstream_url
from inferos.proxy.headers import end_to_end

# The handshake headers are the WebSocket libraries' own business on each leg.
_HANDSHAKE = ("host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
              "sec-websocket-protocol", "sec-websocket-accept")


def is_websocket(request: web.Request) -> bool:
    return (request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


async def relay_websocket(
    request: web.Request, session: aiohttp.ClientSession, upstream: str
) -> web.StreamResponse:
    protocols = tuple(
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    )
    try:
        upstream_ws = await session.ws_connect(
            upstream_url(upstream, request),
            headers=end_to_end(request.headers, drop=_HANDSHAKE),
            protocols=protocols,
            autoping=False,
        )
    except aiohttp.WSServerHandshakeError as exc:
        return errors.openai_error(exc.status or 502, "upstream_websocket_refused",
                                   f"The backend refused the WebSocket upgrade: {exc.message}")
    except (aiohttp.ClientError, OSError) as exc:
        return errors.upstream_unavailable(upstream, type(exc).__name__, None)

    client_ws = web.WebSocketResponse(
        protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (), autoping=False)
    await client_ws.prepare(request)
    async with upstream_ws:
        down = asyncio.get_running_loop().create_task(
            _pump(upstream_ws, client_ws), name="ws-upstream-to-client")
        try:
            await _pump(client_ws, upstream_ws)
        finally:
            if not down.done():
                down.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await down
            if not client_ws.closed:
                await client_ws.close(code=upstream_ws.close_code or 1000)
    return client_ws


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            break
    if not sink.closed:
        await sink.close(code=source.close_code or 1000)
