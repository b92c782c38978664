"""Test equipment for benchmarks: a fast, deterministic OpenAI-style streaming upstream.

Every chat/completions request gets ``--tokens`` SSE chunks, the first at once and the rest
``--gap-ms`` apart, then a usage chunk and ``[DONE]``, so that what a benchmark measures
through a proxy is the proxy, not a model.

    python bench/streaming_upstream.py --port 9000 --tokens 64 --gap-ms 2
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def build_app(tokens: int, gap_s: float) -> web.Application:
    def chunk(i: int) -> bytes:
        body = {"id": "bench", "object": "chat.completion.chunk", "model": "bench",
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    pieces = [chunk(i) for i in range(tokens)]
    final = {"id": "bench", "object": "chat.completion.chunk", "model": "bench", "choices": [],
             "usage": {"prompt_tokens": 16, "completion_tokens": tokens,
                       "total_tokens": 16 + tokens}}
    tail = b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(pieces):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            await resp.write(piece)
        await resp.write(tail)
        await resp.write_eof()
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/api/v1/chat/completions", chat)
    app.router.add_get("/api/v1/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    web.run_app(build_app(args.tokens, args.gap_ms / 1000), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
