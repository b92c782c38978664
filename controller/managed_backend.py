"""A backend Infer-OS runs itself — the embedded engine or llama.cpp's server — reconfigured
blue/green without failing a request, and live where the engine allows it.

``apply`` starts the new configuration on another port and waits until it is healthy,
reads its settings back from it (the engine's health, the llama.cpp process's own command
line, llama-server's or llama-cpp-python's alike), and only then points the proxy at it
(``DataPlane.switch_upstream``), drains the requests still running on the old process and
stops that one. A new process that fails to start, or whose settings read back
differently, is stopped and the old one never stopped serving. Live keys go to the
running engine's control API (``engine_control.py``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import httpx

from inferos.controller import backend as b
from inferos.controller.backend import (
    ActuatorError,
    BackendState,
    Capabilities,
    Capability,
    Outcome,
)
from inferos.controller.backend_child import (
    BackendChild,
    BackendStartError,
    Launcher,
    free_port,
    llamacpp_alias,
    port_is_free,
    read_llamacpp_argv,
)
from inferos.controller.drain import drain
from inferos.controller.engine_control import EngineControl
from inferos.controller.lemonade_backend import flavor_of, read_settings
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.data_plane import DataPlane

log = logging.getLogger(__name__)
ENGINE = "engine"
LLAMACPP = "llamacpp"
CONTROL_TOKEN_ENV = "INFEROS_ENGINE_CONTROL_TOKEN"
# The engine's --api-key, by environment: a command line is readable by every local user.
API_KEY_ENV = "INFEROS_ENGINE_API_KEY"
RESTART_HOW = "blue/green restart, read back from the new process"
_START_FLAG = ("a start flag of llama.cpp's server: a restart setting, not live, and "
               "Infer-OS does not restart it for this")
# The embedded engine's scheduling keys, and why llama.cpp's server takes none of them live.
LLAMACPP_SCHEDULING: Mapping[str, Capability] = {
    "scheduler.max_batch": Capability(None, f"parallel slots (-np) are {_START_FLAG}"),
    "scheduler.max_queue": Capability(None, "llama.cpp's server has no bound on the "
                                      "requests waiting for a slot"),
    "scheduler.tpot_budget_ms": Capability(None, "llama.cpp's server has no time-per-token "
                                           "budget; its prompt batch size (-b, -ub) is "
                                           + _START_FLAG),
    "speculation.enabled": Capability(None, f"speculation (--spec-type) is {_START_FLAG}"),
    "speculation.max_draft": Capability(None, f"the draft length (--draft-max) is "
                                        f"{_START_FLAG}"),
}


def managed_capabilities(kind: str, server: str | None = None) -> Capabilities:
    """What a managed backend applies; ``server`` names what runs (its version, shown in
    health), for llama.cpp which of its two servers."""
    keys: dict[str, Capability] = {}
    if kind == ENGINE:
        for key in ("backend.ctx_size", "backend.threads", "backend.provider"):
            keys[key] = Capability(b.RESTART, RESTART_HOW + "'s health")
        keys["kv.cache_type"] = Capability(None, "a llama.cpp cache type; the engine keeps "
                                           "exact KV and quantizes parked KV by kv.* instead")
        for key in b.LIVE_KEYS:
            keys[key] = Capability(b.LIVE, "the engine's control API, acknowledged")
    else:
        # llama-server has /props, but read both servers one way, from what the OS says
        # the process was started with; llama-cpp-python's server has nothing else.
        on = "llama-server" if server and server.startswith("llama-server") else \
            "llama-cpp-python"
        for key in ("backend.ctx_size", "kv.cache_type", "backend.threads"):
            keys[key] = Capability(b.RESTART, RESTART_HOW + f"'s command line ({on})")
        keys["backend.provider"] = Capability(None, "llama.cpp runs on the device it was "
                                              "built for")
        for key in b.LIVE_KEYS:
            keys[key] = Capability(None, "llama.cpp has no staged KV store or live control")
        keys.update(LLAMACPP_SCHEDULING)
    return Capabilities(kind, server if kind != ENGINE else None, keys)


class ManagedBackend:
    def __init__(self, kind: str, launcher: Launcher, settings: BackendSettings, *,
                 live: Mapping[str, Any] | None = None, start_timeout_s: float = 300,
                 drain_timeout_s: float = 600, preferred_port: int | None = None,
                 api_key: str | None = None) -> None:
        self.name = kind
        self.kind = kind
        self.launcher = launcher
        # The first process takes this port when it is free (the engine's documented 8022);
        # later ones take any free port, since the old process still holds it while draining.
        self.preferred_port = preferred_port
        self._settings = settings
        self._live: Mapping[str, Any] = dict(live or {})
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.child: BackendChild | None = None
        self.switches = 0
        self.last_change_s: float | None = None
        self._client: httpx.AsyncClient | None = None
        self.token = secrets.token_urlsafe(24)
        # The engine's API key (inferos serve makes one per run; the proxy sends it too):
        # with it, no other local process is answered on the engine's port. None: no key.
        self.api_key = api_key if kind == ENGINE else None
        self.engine = EngineControl("", self.token, api_key=self.api_key)

    @property
    def settings(self) -> BackendSettings:
        """What the running process was started with (the last that applied)."""
        return self._settings

    @property
    def url(self) -> str:
        assert self.child is not None, "backend not started"
        return self.child.url

    def _launch(self, settings: BackendSettings, port: int) -> BackendChild:
        if self.kind != ENGINE:
            return self.launcher(settings, {}, port)
        child = self.launcher(settings, self._live, port)
        # The engine's control API takes this token only: no other local process steers it.
        child.env = {**child.env, CONTROL_TOKEN_ENV: self.token}
        if self.api_key:
            child.env = {**child.env, API_KEY_ENV: self.api_key}
            child.api_key = self.api_key
        return child

    async def start(self) -> str:
        port = self.preferred_port
        if port is None or not port_is_free(port):
            port = free_port()
        child = self._launch(self._settings, port)
        await child.start(self.start_timeout_s)
        self.child = child
        self.engine.retarget(child.url)
        return child.url

    async def _read(self, child: BackendChild) -> BackendState:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        if self.kind == LLAMACPP:
            settings = read_llamacpp_argv(child.cmdline())
            return BackendState(managed_capabilities(self.kind, child.server),
                                model=llamacpp_alias(child.argv), settings=settings,
                                max_ctx=None)
        try:
            response = await self._client.get(child.url + "/api/v1/health",
                                              headers=child.auth_headers)
            flavor = flavor_of(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise ActuatorError(f"engine health unreadable: {exc}", rolled_back=False) from exc
        return BackendState(managed_capabilities(self.kind), model=flavor.model_loaded,
                            settings=read_settings(flavor), max_ctx=flavor.max_ctx)

    async def read_back(self) -> BackendState:
        if self.child is None:
            raise ActuatorError("backend not started", rolled_back=False)
        return await self._read(self.child)

    async def apply(self, wanted: BackendSettings, plane: DataPlane, *, model: str | None,
                    changes: tuple[str, ...]) -> tuple[Outcome, ...]:
        assert self.child is not None
        caps = managed_capabilities(self.kind, self.child.server)
        before = await self.read_back()
        key_of = {name: key for key, name in b.RESTART_KEYS.items()}
        asked = {n: getattr(wanted, n) for n in changes if getattr(wanted, n) is not None}
        outcomes = [Outcome(key_of[n], b.NOT_APPLICABLE, v, before.settings.get(n),
                            reason=caps.of(key_of[n]).reason)
                    for n, v in asked.items() if not caps.setting_applicable(n)]
        changed = {n: v for n, v in asked.items() if caps.setting_applicable(n)}
        if not changed:
            return tuple(outcomes)
        if model is not None and before.model is not None and before.model != model:
            return tuple(outcomes) + tuple(
                Outcome(key_of[n], b.NOT_APPLIED, v, before.settings.get(n),
                        reason=f"{before.model} is loaded now, not {model} (a client's "
                               "choice); the decision was for the other model")
                for n, v in changed.items())
        started = time.monotonic()
        green = self._launch(wanted, free_port())
        try:
            await green.start(self.start_timeout_s)
            after = await self._read(green)
        except (BackendStartError, OSError, ActuatorError) as exc:
            await green.stop()
            raise ActuatorError(f"new backend did not start: {exc}", rolled_back=True) from exc
        wrong = {n: after.settings.get(n) for n, v in changed.items()
                 if not _matches(n, v, after)}
        if wrong:
            await green.stop()
            return tuple(outcomes) + tuple(
                Outcome(key_of[n], b.NOT_APPLIED, v, wrong.get(n, before.settings.get(n)),
                        "blue/green restart", f"the new process reports {wrong[n]!r}; "
                        "it was stopped and the old one kept serving" if n in wrong else
                        "the restart was abandoned")
                for n, v in changed.items())
        blue = self.child
        plane.switch_upstream(green.url)  # new requests go to green from here on
        self.child = green
        self.engine.retarget(green.url)
        self._settings = wanted
        self.switches += 1
        self.last_change_s = time.monotonic() - started
        if not await drain(plane, blue.url, self.drain_timeout_s, generation_only=False):
            log.warning("requests on the old backend did not finish in %s s; stopping it",
                        self.drain_timeout_s)
        await blue.stop()
        return tuple(outcomes) + tuple(
            Outcome(key_of[n], b.APPLIED, v, after.settings.get(n), "blue/green restart",
                    "read back from the new process")
            for n, v in changed.items())

    async def apply_live(self, live: Mapping[str, Any], version: int) -> tuple[Outcome, ...]:
        if self.kind != ENGINE:
            return b.not_applicable(live, managed_capabilities(self.kind))
        self._live = dict(live)  # a later blue/green process starts with these
        return await self.engine.push(live, version)

    def exited(self) -> int | None:
        child = self.child
        process = child.process if child is not None else None
        return None if process is None else process.returncode

    async def restart(self) -> str:
        """The process died: start the last good settings again (any free port)."""
        old = self.child
        if old is not None:
            await old.stop()
        child = self._launch(self._settings, free_port())
        await child.start(self.start_timeout_s)
        self.child = child
        self.engine.retarget(child.url)
        return child.url

    async def describe(self) -> dict[str, Any]:
        child = self.child
        return {"backend": self.name, "url": child.url if child else None,
                "server": child.server if child else None,
                "pid": child.pid if child else None,
                "argv": child.argv[1:] if child else None, "switches": self.switches}

    async def close(self) -> None:
        if self.child is not None:
            await self.child.stop()
            self.child = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.engine.close()


def _matches(name: str, wanted: Any, after: BackendState) -> bool:
    got = after.settings.get(name)
    if name == "ctx_size" and after.max_ctx is not None:
        return got == min(wanted, after.max_ctx)
    if name == "provider" and isinstance(got, str) and isinstance(wanted, str):
        return wanted.lower() in got.lower() or got.lower().startswith(wanted.lower())
    return got == wanted
