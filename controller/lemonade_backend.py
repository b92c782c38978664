"""A Lemonade server (or the embedded engine's Lemonade API) reconfigured through its own
``/load``, with what it can do detected from its own ``/api/v1/health``.

- C++ servers (v9+) report ``version`` and ``all_models_loaded``; their ``/load`` takes
  ``ctx_size`` and ``llamacpp_args``, and ``recipe_options`` reads back what is in effect.
  A setting is ``applied`` only when ``recipe_options`` shows it after the load; when the
  server does not echo it (``llamacpp_args`` on many versions), it is ``not_applied``
  and the key is marked unverifiable, so the controller never reloads for it again.
- The Python server (<= v8.1.12) reports neither and its ``/load`` takes only
  ``model_name`` (context size and KV types are its start flags): every setting is not
  applicable, and the controller never sends a ``/load`` to it.
- An Infer-OS engine behind ``--upstream`` (recipe ``inferos-*``) takes ``ctx_size`` and
  ``threads`` on ``/load``, and the live policy on its control API.

A reload fails the requests running on the model, so ``apply`` closes the proxy's gate
for *generation requests of that model only*, waits (bounded) for the running ones, re-reads
the server (a client may have loaded something else meanwhile: then it changes nothing),
loads, reads back, and reopens the gate. Everything else (health, halt, stats, models, a
client's own load) passes straight through the whole time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from inferos.controller import backend as b
from inferos.controller.backend import (
    ActuatorError,
    BackendState,
    Capabilities,
    Capability,
    Outcome,
)
from inferos.controller.drain import drain
from inferos.controller.engine_control import EngineControl
from inferos.controller.snapshot import BackendSettings
from inferos.proxy.data_plane import DataPlane

log = logging.getLogger(__name__)
HEALTH = "/api/v1/health"
LOAD = "/api/v1/load"

PYTHON_REASON = ("the Python Lemonade server (<= v8.1.12) takes only model_name on /load; "
                 "context size and llama.cpp options are its start flags")
NO_STORE = "Lemonade has no staged KV store or live control API"
NO_SCHEDULER = ("Lemonade has no such control: no live batch size, queue bound, "
                "time-per-token budget or speculation setting (the embedded engine's)")


@dataclass(frozen=True, slots=True)
class ServerFlavor:
    kind: str                 # "cpp" | "python"
    version: str | None
    model_loaded: str | None
    recipe: str | None
    options: Mapping[str, Any]
    max_ctx: int | None

    @property
    def is_inferos_engine(self) -> bool:
        return str(self.recipe or "").startswith("inferos")


def flavor_of(health: Any) -> ServerFlavor:
    health = health if isinstance(health, dict) else {}
    loaded = health.get("all_models_loaded")
    entry: dict[str, Any] = {}
    if isinstance(loaded, list) and loaded:
        first = next((m for m in loaded if isinstance(m, dict)
                      and m.get("model_name") == health.get("model_loaded")), loaded[0])
        entry = first if isinstance(first, dict) else {}
    options = entry.get("recipe_options")
    version = health.get("version")
    max_ctx = entry.get("max_context")
    model = health.get("model_loaded") or entry.get("model_name")
    return ServerFlavor(
        kind="cpp" if version is not None or isinstance(loaded, list) else "python",
        version=str(version) if version is not None else None,
        model_loaded=model if isinstance(model, str) else None,
        recipe=entry.get("recipe") if isinstance(entry.get("recipe"), str) else None,
        options=options if isinstance(options, dict) else {},
        max_ctx=max_ctx if isinstance(max_ctx, int) else None,
    )


def capabilities_of(flavor: ServerFlavor, unverifiable: frozenset[str] = frozenset()
                    ) -> Capabilities:
    keys: dict[str, Capability] = {}
    if flavor.kind == "python":
        for key in b.RESTART_KEYS:
            keys[key] = Capability(None, PYTHON_REASON)
        for key in b.LIVE_KEYS:
            keys[key] = Capability(None, NO_STORE)
        for key in b.SCHEDULING_KEYS:
            keys[key] = Capability(None, NO_SCHEDULER)
        return Capabilities("lemonade-python", None, keys)
    load = "reloaded through /load, read back from health's recipe_options"
    if flavor.is_inferos_engine:
        keys["backend.ctx_size"] = Capability(b.RELOAD, load)
        keys["backend.threads"] = Capability(b.RELOAD, load)
        keys["backend.provider"] = Capability(b.RELOAD, load)
        keys["kv.cache_type"] = Capability(None, "llama.cpp cache types; the engine keeps "
                                           "exact KV and quantizes parked KV by kv.* instead")
        for key in b.LIVE_KEYS:
            keys[key] = Capability(b.LIVE, "the engine's control API, acknowledged")
        kind = "engine"
    else:
        keys["backend.ctx_size"] = Capability(b.RELOAD, load)
        llamacpp = flavor.recipe in (None, "llamacpp")
        args = ("llamacpp_args on /load, read back from recipe_options" if llamacpp else
                f"recipe {flavor.recipe} takes no llama.cpp arguments")
        keys["kv.cache_type"] = Capability(b.RELOAD if llamacpp else None, args)
        keys["backend.threads"] = Capability(b.RELOAD if llamacpp else None, args)
        keys["backend.provider"] = Capability(None, "Lemonade picks the device by recipe")
        for key in b.LIVE_KEYS:
            keys[key] = Capability(None, NO_STORE)
        for key in b.SCHEDULING_KEYS:
            keys[key] = Capability(None, NO_SCHEDULER)
        kind = "lemonade-cpp"
    for key in unverifiable:
        keys[key] = Capability(None, "this server did not report the value back after a "
                                     "load, so it cannot be verified; not sent again")
    return Capabilities(kind, flavor.version, keys)


def read_settings(flavor: ServerFlavor) -> dict[str, Any]:
    """BackendSettings fields the server reports in effect (absent: not reported)."""
    options = flavor.options
    out: dict[str, Any] = {}
    if isinstance(options.get("ctx_size"), int):
        out["ctx_size"] = options["ctx_size"]
    if isinstance(options.get("threads"), int):
        out["threads"] = options["threads"]
    if isinstance(options.get("provider"), str):
        out["provider"] = options["provider"]
    args = options.get("llamacpp_args")
    if isinstance(args, str):
        words = args.split()
        for flag, name, cast in (("--cache-type-k", "cache_type", str),
                                 ("--threads", "threads", int), ("-t", "threads", int)):
            if flag in words and words.index(flag) + 1 < len(words):
                try:
                    out[name] = cast(words[words.index(flag) + 1])
                except ValueError:
                    pass
        if "cache_type" not in out:
            out["cache_type"] = "f16"  # llama.cpp's default when the args name none
    return out


class LemonadeBackend:
    name = "lemonade"

    def __init__(self, base_url: str, *, drain_timeout_s: float = 300,
                 load_timeout_s: float = 600, gate_wait_s: float = 120) -> None:
        self.base_url = base_url.rstrip("/")
        self.drain_timeout_s = drain_timeout_s
        self.gate_wait_s = gate_wait_s
        self._timeout = httpx.Timeout(load_timeout_s, connect=5)
        self._client: httpx.AsyncClient | None = None
        self._unverifiable: frozenset[str] = frozenset()
        self.engine = EngineControl(self.base_url)
        self.loads = 0
        self.last_change_s: float | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, on the controller's loop (an httpx client is bound to one).
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)
        return self._client

    async def start(self) -> str:
        return self.base_url

    async def _health(self) -> dict[str, Any]:
        # Control plane only: a transient connect failure is worth two more tries.
        async for attempt in AsyncRetrying(stop=stop_after_attempt(3), wait=wait_fixed(0.2),
                                           retry=retry_if_exception_type(httpx.TransportError),
                                           reraise=True):
            with attempt:
                response = await self.client.get(HEALTH, timeout=5.0)
                response.raise_for_status()
                body = response.json()
                return body if isinstance(body, dict) else {}
        raise AssertionError("unreachable")

    async def flavor(self) -> ServerFlavor:
        try:
            return flavor_of(await self._health())
        except (httpx.HTTPError, ValueError) as exc:
            raise ActuatorError(f"backend health unreadable: {type(exc).__name__} {exc}",
                                rolled_back=False) from exc

    async def read_back(self) -> BackendState:
        flavor = await self.flavor()
        return BackendState(capabilities_of(flavor, self._unverifiable),
                            model=flavor.model_loaded, settings=read_settings(flavor),
                            max_ctx=flavor.max_ctx)

    def load_body(self, flavor: ServerFlavor, wanted: BackendSettings, model: str,
                  changed: set[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model_name": model}
        if "ctx_size" in changed and wanted.ctx_size is not None:
            body["ctx_size"] = wanted.ctx_size
        if flavor.is_inferos_engine:
            if "threads" in changed and wanted.threads:
                body["threads"] = wanted.threads
            if "provider" in changed and wanted.provider:
                body["provider"] = wanted.provider
        elif changed & {"cache_type", "threads"}:
            body["llamacpp_args"] = wanted.llamacpp_args()
        return body

    async def apply(self, wanted: BackendSettings, plane: DataPlane, *, model: str | None,
                    changes: tuple[str, ...]) -> tuple[Outcome, ...]:
        flavor = await self.flavor()
        caps = capabilities_of(flavor, self._unverifiable)
        before = read_settings(flavor)
        asked = {name: getattr(wanted, name) for name in changes
                 if getattr(wanted, name) is not None}
        key_of = {name: key for key, name in b.RESTART_KEYS.items()}
        outcomes = [Outcome(key_of[n], b.NOT_APPLICABLE, v, before.get(n), reason=caps.of(
            key_of[n]).reason) for n, v in asked.items() if not caps.setting_applicable(n)]
        changed = {n for n in asked if caps.setting_applicable(n)}
        if not changed:
            return tuple(outcomes)
        refused = self._stale(flavor, model)
        if refused:
            return tuple(outcomes) + tuple(Outcome(key_of[n], b.NOT_APPLIED, asked[n],
                                                   before.get(n), reason=refused)
                                           for n in changed)
        assert flavor.model_loaded is not None
        loaded = flavor.model_loaded
        gate = plane.close_gate(loaded, f"reloading {loaded}", max_wait_s=self.gate_wait_s)
        try:
            if not await drain(plane, self.base_url, self.drain_timeout_s):
                raise ActuatorError("generations did not finish in time", rolled_back=True)
            # A client may have loaded or unloaded while we waited: then we change nothing.
            flavor = await self.flavor()
            refused = self._stale(flavor, loaded)
            if refused:
                return tuple(outcomes) + tuple(Outcome(key_of[n], b.NOT_APPLIED, asked[n],
                                                       before.get(n), reason=refused)
                                               for n in changed)
            started = time.monotonic()
            body = self.load_body(flavor, wanted, loaded, changed)
            try:
                await self._load(body)
                after = await self.flavor()
            except (httpx.HTTPError, ActuatorError) as exc:
                rolled = await self._restore(flavor, loaded, before)
                raise ActuatorError(f"load failed: {exc}", rolled_back=rolled) from exc
            self.last_change_s = time.monotonic() - started
        finally:
            plane.open_gate(gate)
        now = read_settings(after)
        for name in sorted(changed):
            key = key_of[name]
            if name not in now:
                self._unverifiable |= {key}
                outcomes.append(Outcome(key, b.NOT_APPLIED, asked[name], None, "/load",
                                        "the server did not report it back after the load"))
            elif now[name] == asked[name] or (name == "ctx_size" and after.max_ctx is not None
                                              and now[name] == min(asked[name], after.max_ctx)):
                outcomes.append(Outcome(key, b.APPLIED, asked[name], now[name], "/load",
                                        "read back from recipe_options"))
            else:
                outcomes.append(Outcome(key, b.NOT_APPLIED, asked[name], now[name], "/load",
                                        f"the server reports {now[name]!r} after the load"))
        return tuple(outcomes)

    @staticmethod
    def _stale(flavor: ServerFlavor, model: str | None) -> str | None:
        if flavor.model_loaded is None:
            return "no model is loaded (a client unloaded it); nothing to reconfigure"
        if model is not None and flavor.model_loaded != model:
            return (f"{flavor.model_loaded} is loaded now, not {model} (a client's choice); "
                    "the decision was for the other model")
        return None

    async def _load(self, body: dict[str, Any]) -> None:
        response = await self.client.post(LOAD, json=body)
        if response.status_code >= 400:
            raise ActuatorError(f"/load answered {response.status_code}: "
                                f"{response.text[:200]}", rolled_back=False)
        self.loads += 1

    async def _restore(self, flavor: ServerFlavor, model: str, before: Mapping[str, Any]
                       ) -> bool:
        last = BackendSettings(**{k: v for k, v in before.items()
                                  if k in ("ctx_size", "cache_type", "threads", "provider")})
        try:
            await self._load(self.load_body(flavor, last, model,
                                            {"ctx_size", "cache_type", "threads"}))
        except (httpx.HTTPError, ActuatorError):
            log.exception("could not restore the last good settings")
            return False
        return True

    async def apply_live(self, live: Mapping[str, Any], version: int) -> tuple[Outcome, ...]:
        flavor = await self.flavor()
        caps = capabilities_of(flavor, self._unverifiable)
        if not flavor.is_inferos_engine:
            return b.not_applicable(live, caps)
        return await self.engine.push(live, version)

    def exited(self) -> int | None:
        return None  # not a process of ours

    async def restart(self) -> str:
        return self.base_url

    async def describe(self) -> dict[str, Any]:
        flavor = await self.flavor()
        return {"backend": self.name, "url": self.base_url, "server": flavor.kind,
                "version": flavor.version, "model": flavor.model_loaded,
                "recipe_options": dict(flavor.options), "loads": self.loads}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.engine.close()


def settings_from(state: BackendState, base: BackendSettings) -> BackendSettings:
    """``base`` with what the backend reports in effect."""
    known = {k: v for k, v in state.settings.items()
             if k in ("ctx_size", "cache_type", "threads", "provider")}
    return replace(base, **known)
