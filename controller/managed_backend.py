"""A backend Infer-OS runs itself, reconfigured blue/green without failing a request.

``apply`` starts the new configuration on another port and waits for it to be healthy;
only then does it point the proxy at it (one attribute swap, read by each new request),
drain the requests still running on the old process, and stop that one. If the new
process fails to start, the old one never stopped serving: the last good configuration is
still in place, and ``ActuatorError(rolled_back=True)`` says so.
"""

from __future__ import annotations

import logging
from typing import Any

from inferos.controller.actuator import ActuatorError
from inferos.controller.backend_child import (
    BackendChild,
    BackendStartError,
    Launcher,
    free_port,
    port_is_free,
)
from inferos.controller.drain import drain
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.app import ProxyRuntime

log = logging.getLogger(__name__)


class ManagedBackend:
    name = "managed"

    def __init__(self, launcher: Launcher, settings: BackendSettings, *,
                 relevant_fields: tuple[str, ...] = ("ctx_size", "threads"),
                 start_timeout_s: float = 300, drain_timeout_s: float = 600,
                 preferred_port: int | None = None) -> None:
        self.launcher = launcher
        # The first process takes this port when it is free (the engine's documented 8022);
        # later ones take any free port, since the old process still holds it while draining.
        self.preferred_port = preferred_port
        # The settings this backend's command line reflects; others change nothing here.
        self.relevant_fields = relevant_fields
        self._settings = settings
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.child: BackendChild | None = None
        self.runtime: ProxyRuntime | None = None
        self.switches = 0

    @property
    def settings(self) -> BackendSettings:
        return self._settings

    @property
    def url(self) -> str:
        assert self.child is not None, "backend not started"
        return self.child.url

    async def start(self) -> str:
        """Starts the first process; returns its URL (the proxy's upstream)."""
        port = self.preferred_port
        if port is None or not port_is_free(port):
            port = free_port()
        child = self.launcher(self._settings, port)
        await child.start(self.start_timeout_s)
        self.child = child
        return child.url

    def attach(self, runtime: ProxyRuntime) -> None:
        self.runtime = runtime

    async def apply(self, settings: BackendSettings, model: str | None) -> None:
        assert self.runtime is not None and self.child is not None
        green = self.launcher(settings, free_port())
        try:
            await green.start(self.start_timeout_s)
        except (BackendStartError, OSError) as exc:
            raise ActuatorError(f"new backend did not start: {exc}", rolled_back=True) from exc
        blue = self.child
        self.runtime.upstream = green.url  # new requests go to green from here on
        self.child = green
        self._settings = settings
        self.switches += 1
        if not await drain(self.runtime, blue.url, self.drain_timeout_s):
            log.warning("requests on the old backend did not finish in %s s; stopping it",
                        self.drain_timeout_s)
        await blue.stop()

    async def describe(self) -> dict[str, Any]:
        child = self.child
        return {"actuator": self.name, "url": child.url if child else None,
                "pid": child.pid if child else None,
                "argv": child.argv[1:] if child else None, "switches": self.switches}

    async def close(self) -> None:
        if self.child is not None:
            await self.child.stop()
            self.child = None
