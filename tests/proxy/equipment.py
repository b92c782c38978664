"""Test equipment (not a backend): an aiohttp upstream that does what a model server cannot
do on demand — echo the exact request, emit fixed bytes at awkward boundaries, go silent,
crash mid-stream, record a client disconnect, serve gzip bytes, echo WebSocket frames.

It measures the proxy itself; tests that claim the stack works use real backends.
"""

from __future__ import annotations

import asyncio
import base64
import gzip

from aiohttp import WSMsgType, web

from tests.local_server import serve_on_free_port

# A stream with everything a relay must keep byte for byte: an event: line, a comment,
# CRLF and LF line ends, a UTF-8 character split across chunks, an in-band error, [DONE].
FIXED_SSE_PIECES: tuple[bytes, ...] = (
    b": ping\n\n",
    b"event: progress\nda",
    b"ta: {\"choices\":[{\"delta\":{\"content\":\"H\"}}]}\n",
    b"\ndata: {\"choices\":[{\"delta\":{\"content\":\"\xc3",
    b"\xa9\"}}]}\r\n\r\n",
    b"data: {\"error\":{\"message\":\"in-band\",\"type\":\"server_error\"}}\n\n",
    b"d",
    b"ata: [DONE]\n\n",
)
FIXED_SSE = b"".join(FIXED_SSE_PIECES)


class EquipmentUpstream:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first_piece_sent = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.chunks_sent_before_disconnect = 0
        self.requests = 0
        self.app = web.Application(client_max_size=1024**3)
        r = self.app.router
        r.add_route("*", "/echo/{tail:.*}", self.echo)
        r.add_get("/sse/fixed", self.sse_fixed)
        r.add_get("/sse/hold", self.sse_hold)
        r.add_post("/sse/forever", self.sse_forever)
        r.add_post("/sse/crash", self.sse_crash)
        r.add_get("/length/crash", self.length_crash)
        r.add_get("/chunked/crash", self.chunked_crash)
        r.add_route("*", "/silent", self.silent)
        r.add_get("/gzip", self.gzipped)
        r.add_get("/status/{code}", self.status)
        r.add_get("/ws", self.websocket)
        r.add_post("/sink", self.sink)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner, self.url = await serve_on_free_port(self.app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_b64": base64.b64encode(body).decode(),
                "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
            },
            headers={"X-Upstream": "equipment", "Set-Cookie": "a=1"},
        )

    async def sink(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    async def sse_fixed(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        for piece in FIXED_SSE_PIECES:
            await resp.write(piece)
            await asyncio.sleep(0.01)  # so pieces leave as separate TCP segments
        await resp.write_eof()
        return resp

    async def sse_hold(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(FIXED_SSE_PIECES[0])
        self.first_piece_sent.set()
        await self.release.wait()
        for piece in FIXED_SSE_PIECES[1:]:
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def sse_forever(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        try:
            while True:
                await resp.write(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
                self.chunks_sent_before_disconnect += 1
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        return resp

    async def sse_crash(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(FIXED_SSE_PIECES[0] + FIXED_SSE_PIECES[1])
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the backend process dies mid-stream
        return resp

    async def length_crash(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"partial": ')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def chunked_crash(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"partial": ')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def silent(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def gzipped(self, request: web.Request) -> web.Response:
        body = gzip.compress(b'{"hello": "world"}' * 50)
        return web.Response(body=body, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})

    async def status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text='{"error":"text shape"}',
                            headers={"X-Custom": "kept", "Content-Type": "application/json"})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo.v1",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        return ws
