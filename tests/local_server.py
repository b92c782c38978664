"""Serving a test's aiohttp app on a free loopback port: the one way test equipment starts."""

from __future__ import annotations

from aiohttp import web


async def serve_on_free_port(app: web.Application) -> tuple[web.AppRunner, str]:
    """Starts ``app`` on 127.0.0.1 (a free port); returns its runner and origin URL."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
