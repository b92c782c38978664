"""Starting and stopping the proxy and admin listeners together.

``ProxyServer`` is the one place where the data plane's listeners, upstream session and
metrics live and die; ``inferos serve`` and the tests use it alike. Both listeners bound
their clients' connections (header timeout, idle keep-alive, cap: ``connection_limits.py``).
"""

from __future__ import annotations

import socket
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from inferos.proxy.admin import build_admin_app
from inferos.proxy.app import ProxyRuntime, build_proxy_app
from inferos.proxy.connection_limits import ConnectionMetrics, GuardedAppRunner, ListenerGuard
from inferos.proxy.metrics import ProxyMetrics
from inferos.proxy.observer import Observer
from inferos.proxy.settings import HostPort, ProxySettings


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound sockets only here
    assert server is not None
    sockets: list[socket.socket] = list(server.sockets)  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1])


class ProxyServer:
    def __init__(self, settings: ProxySettings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        if registry is None:
            # process_resident_memory_bytes & co., on our registry rather than the global one
            ProcessCollector(registry=self.registry)
        self.observer = Observer()
        self.runtime = ProxyRuntime(settings=settings, observer=self.observer)
        self.data_plane = self.runtime.data_plane
        plane = self.data_plane
        self.metrics = ProxyMetrics(self.registry, lambda: plane.snapshot.passthrough)
        self.observer.subscribe(self.metrics.observe)
        self.proxy_app = build_proxy_app(self.runtime)
        self.admin_app = build_admin_app(self.runtime, self.registry)
        connection_metrics = ConnectionMetrics(self.registry)
        # Each listener counts its own connections: a flood of one leaves the other open.
        self.guards = {name: ListenerGuard(name, settings.connections, connection_metrics)
                       for name in ("proxy", "admin")}
        self._runners: list[web.AppRunner] = []
        self.listen: HostPort = settings.listen
        self.admin: HostPort = settings.admin

    async def _start_site(self, app: web.Application, where: HostPort,
                          guard: ListenerGuard) -> HostPort:
        # handler_cancellation: a client that disconnects cancels its handler at once, even
        # while the backend is silent (a long prefill), and the upstream request with it.
        # The guard bounds slow and idle clients and the connections open at once.
        runner = GuardedAppRunner(app, guard, handler_cancellation=True, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, where.host, where.port, reuse_address=True)
        await site.start()
        return HostPort(where.host, _bound_port(site))

    async def start(self) -> None:
        try:
            self.listen = await self._start_site(self.proxy_app, self.settings.listen,
                                                 self.guards["proxy"])
            self.admin = await self._start_site(self.admin_app, self.settings.admin,
                                                self.guards["admin"])
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
