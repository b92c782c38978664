"""The agent: proxy, controller and (when Infer-OS runs one) the backend, started and
stopped together. ``inferos serve`` runs one; tests run them in-process.

Start order: the controller's thread first (it starts a managed backend, whose URL the
proxy needs), then the listeners; stop order is the reverse. The fail-safe's watchdog
runs on the proxy's event loop, owned by the admin app's cleanup context. The controller
reaches the proxy only through ``proxy.data_plane``.

The admin listener is guarded (``admin_guard.py``): an agent whose admin API would listen
beyond loopback without a token refuses to be built (``ConfigError``). A backend Infer-OS
runs itself may have a key (``ProxySettings.upstream_api_key``); the controller's own
reads of the upstream send it as the proxy does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from types import TracebackType

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from inferos.controller.admin_guard import AdminGuard, check_exposure
from inferos.controller.agent_api import add_agent_api
from inferos.controller.backend import Backend
from inferos.controller.controller import Controller, ControllerSettings
from inferos.controller.policy import Policy
from inferos.controller.request_stats import RequestStats
from inferos.controller.run_context import TokenCounter
from inferos.proxy.app import ProxyRuntime
from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import ProxySettings
from inferos.tasks import TaskGroup


class Agent:
    def __init__(self, proxy_settings: ProxySettings, policy: Policy,
                 controller_settings: ControllerSettings, backend: Backend | None = None,
                 *, registry: CollectorRegistry | None = None,
                 token_counters: dict[str, TokenCounter] | None = None,
                 admin_token: str | None = None,
                 allowed_origins: tuple[str, ...] = (),
                 **controller_options: object) -> None:
        check_exposure(proxy_settings.admin, admin_token)
        if proxy_settings.upstream_api_key:
            controller_settings = dataclasses.replace(
                controller_settings, upstream_api_key=proxy_settings.upstream_api_key)
        self.registry = registry or CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
        self.backend = backend
        self.proxy = ProxyServer(proxy_settings, self.registry)
        plane = self.proxy.data_plane
        if policy.mode == "passthrough":
            plane.set_passthrough(True)
        elif proxy_settings.passthrough:
            policy = dataclasses.replace(policy, mode="passthrough")
        self.stats = RequestStats()
        self.proxy.observer.subscribe(self.stats.add)
        self.controller = Controller(plane, self.registry, policy, controller_settings,
                                     backend, stats=self.stats, token_counters=token_counters,
                                     **controller_options)  # type: ignore[arg-type]
        add_agent_api(self.proxy.admin_app, self.controller, guard=AdminGuard.of(
            proxy_settings.admin, token=admin_token,
            allowed_hosts=proxy_settings.allowed_hosts, allowed_origins=allowed_origins))
        self.proxy.admin_app.cleanup_ctx.append(self._watchdog)

    async def _watchdog(self, app: web.Application) -> AsyncIterator[None]:
        tasks = TaskGroup()
        tasks.start(self.controller.failsafe.watch(), name="failsafe-watchdog")
        yield
        await tasks.stop()

    @property
    def runtime(self) -> ProxyRuntime:
        return self.proxy.runtime

    async def start(self) -> None:
        # Off the loop: the controller's start reads the backend, which may be served by
        # this very loop (test equipment); a blocked loop would answer nobody meanwhile.
        await asyncio.to_thread(self.controller.start)
        try:
            await self.proxy.start()
        except BaseException:
            self.controller.stop()
            raise

    async def stop(self) -> None:
        await self.proxy.stop()
        self.controller.stop()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
