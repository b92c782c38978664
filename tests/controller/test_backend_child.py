"""A managed backend is healthy only when *its own* process answers on its port: a server
already on that port (another Infer-OS, a race for a port both found free) must not make a
child that never bound look started."""

from __future__ import annotations

import sys

import pytest
from aiohttp import web

from inferos.controller.backend_child import BackendChild, BackendStartError


async def test_another_server_on_the_port_is_not_our_backend() -> None:
    # test equipment: a squatter that answers the health check on the port
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    child = BackendChild([sys.executable, "-c", "import time; time.sleep(60)"], port, "/health")
    try:
        with pytest.raises(BackendStartError, match="not healthy"):
            await child.start(timeout_s=1.5)
        assert child.process is None  # stopped after the failed start
    finally:
        await runner.cleanup()


async def test_our_own_server_on_the_port_is_healthy() -> None:
    from inferos.controller.backend_child import free_port

    port = free_port()
    serve = ("import http.server, sys; "
             "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), "
             "http.server.SimpleHTTPRequestHandler).serve_forever()")
    child = BackendChild([sys.executable, "-c", serve, str(port)], port, "/")
    await child.start(timeout_s=30)
    try:
        assert child.owns_port()
    finally:
        await child.stop()
