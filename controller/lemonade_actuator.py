"""Reconfiguring a Lemonade server (or the embedded engine) through its own API.

- The server's flavour comes from ``GET /api/v1/health``: C++ servers (v9+) report
  ``version`` and ``all_models_loaded``; the Python server (<= v8.1.12) reports neither and
  takes only ``model_name`` on ``/load`` (context size and KV types are its start flags).
- A C++ ``/load`` with new options reloads the model, which fails requests running on it.
  So the actuator closes the proxy's admission gate (new requests wait, bounded), drains
  the requests in flight, loads, verifies in ``/health`` that the options took effect, and
  reopens the gate. On any failure it loads the last good settings again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from inferos.controller.actuator import ActuatorError
from inferos.controller.drain import drain
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.app import ProxyRuntime

log = logging.getLogger(__name__)
HEALTH = "/api/v1/health"
LOAD = "/api/v1/load"
UNLOAD = "/api/v1/unload"


@dataclass(frozen=True, slots=True)
class ServerFlavor:
    kind: str                 # "cpp" | "python"
    version: str | None
    model_loaded: str | None
    recipe: str | None
    ctx_size: int | None
    is_inferos_engine: bool


def flavor_of(health: dict[str, Any]) -> ServerFlavor:
    loaded = health.get("all_models_loaded")
    entry: dict[str, Any] = {}
    if isinstance(loaded, list) and loaded:
        first = next((m for m in loaded if m.get("model_name") == health.get("model_loaded")),
                     loaded[0])
        entry = first if isinstance(first, dict) else {}
    options = entry.get("recipe_options") or {}
    version = health.get("version")
    kind = "cpp" if version is not None or isinstance(loaded, list) else "python"
    return ServerFlavor(
        kind=kind,
        version=str(version) if version is not None else None,
        model_loaded=health.get("model_loaded") or entry.get("model_name"),
        recipe=entry.get("recipe"),
        ctx_size=options.get("ctx_size") if isinstance(options, dict) else None,
        is_inferos_engine=str(entry.get("recipe", "")).startswith("inferos"),
    )


class LemonadeActuator:
    name = "lemonade"

    def __init__(self, base_url: str, runtime: ProxyRuntime | None = None, *,
                 drain_timeout_s: float = 300,
                 load_timeout_s: float = 600) -> None:
        self.base_url = base_url.rstrip("/")
        self.runtime = runtime
        self.drain_timeout_s = drain_timeout_s
        self._client = httpx.AsyncClient(base_url=self.base_url,
                                         timeout=httpx.Timeout(load_timeout_s, connect=5))
        self._settings = BackendSettings()
        self.loads = 0

    @property
    def settings(self) -> BackendSettings:
        return self._settings

    def attach(self, runtime: ProxyRuntime) -> None:
        """The proxy whose admission gate and in-flight counts a reconfiguration uses."""
        self.runtime = runtime

    async def health(self) -> dict[str, Any]:
        # Control plane only: a transient connect failure is worth two more tries.
        async for attempt in AsyncRetrying(stop=stop_after_attempt(3), wait=wait_fixed(0.2),
                                           retry=retry_if_exception_type(httpx.TransportError),
                                           reraise=True):
            with attempt:
                response = await self._client.get(HEALTH)
                response.raise_for_status()
                body = response.json()
                return body if isinstance(body, dict) else {}
        raise AssertionError("unreachable")

    async def flavor(self) -> ServerFlavor:
        return flavor_of(await self.health())

    def load_body(self, flavor: ServerFlavor, settings: BackendSettings,
                  model: str) -> dict[str, Any]:
        if flavor.kind == "python":
            return {"model_name": model}
        body: dict[str, Any] = {"model_name": model}
        if settings.ctx_size is not None:
            body["ctx_size"] = settings.ctx_size
        if flavor.is_inferos_engine:
            if settings.threads:
                body["threads"] = settings.threads
        elif flavor.recipe in (None, "llamacpp"):
            body["llamacpp_args"] = settings.llamacpp_args()
        return body

    async def _load(self, body: dict[str, Any]) -> None:
        response = await self._client.post(LOAD, json=body)
        if response.status_code >= 400:
            raise ActuatorError(f"/load answered {response.status_code}: "
                                f"{response.text[:200]}", rolled_back=False)
        self.loads += 1

    async def apply(self, settings: BackendSettings, model: str | None) -> None:
        try:
            flavor = await self.flavor()
        except (httpx.HTTPError, ValueError) as exc:
            raise ActuatorError(f"backend health unreadable: {exc}", rolled_back=False) from exc
        model = model or flavor.model_loaded
        if model is None:
            raise ActuatorError("no model loaded and none named", rolled_back=False)
        assert self.runtime is not None, "attach() the proxy's runtime first"
        admission = self.runtime.admission
        admission.close_gate()
        try:
            if not await drain(self.runtime, self.runtime.upstream, self.drain_timeout_s):
                raise ActuatorError("requests did not drain in time", rolled_back=True)
            try:
                await self._load(self.load_body(flavor, settings, model))
                after = await self.flavor()
            except (httpx.HTTPError, ActuatorError) as exc:
                rolled = await self._restore(flavor, model)
                raise ActuatorError(f"load failed: {exc}", rolled_back=rolled) from exc
            if (flavor.kind == "cpp" and settings.ctx_size is not None
                    and after.ctx_size is not None and after.ctx_size > settings.ctx_size):
                rolled = await self._restore(flavor, model)
                raise ActuatorError(f"ctx_size {after.ctx_size} in effect, asked "
                                    f"{settings.ctx_size}", rolled_back=rolled)
            self._settings = settings
        finally:
            admission.open_gate()

    async def _restore(self, flavor: ServerFlavor, model: str) -> bool:
        try:
            await self._load(self.load_body(flavor, self._settings, model))
        except (httpx.HTTPError, ActuatorError):
            log.exception("could not restore the last good settings")
            return False
        return True

    async def unload(self, model: str | None = None) -> None:
        await self._client.post(UNLOAD, json={"model_name": model} if model else {})

    async def describe(self) -> dict[str, Any]:
        flavor = await self.flavor()
        return {"actuator": self.name, "url": self.base_url, "server": flavor.kind,
                "version": flavor.version, "model": flavor.model_loaded,
                "ctx_size": flavor.ctx_size, "loads": self.loads}

    async def close(self) -> None:
        await self._client.aclose()
