"""The controller reconfiguring the embedded engine on the real model, both ways it can:
through the engine's Lemonade API (``/load``, as it does a real Lemonade), and blue/green
as the managed backend of ``inferos serve``'s default. Requests keep flowing; none fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import engine_launcher
from inferos.controller.lemonade_backend import LemonadeBackend, flavor_of
from inferos.controller.managed_backend import ENGINE, ManagedBackend
from inferos.controller.snapshot import BackendSettings
from inferos.tasks import TaskGroup
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.controller.steady_load import steady_load
from tests.engine.engine_process import MODEL, engine_process, prepared_model

pytestmark = pytest.mark.model


async def _until(predicate, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _engine_ctx(url: str) -> int:
    health = httpx.get(url + "/api/v1/health", timeout=10).json()
    return int(health["all_models_loaded"][0]["recipe_options"]["ctx_size"])


async def _pin_ctx_under_load(agent: Agent, ctx_size: int, switched) -> list[int]:  # type: ignore[no-untyped-def]
    stop, results = asyncio.Event(), []
    tasks = TaskGroup()
    load = steady_load(agent.proxy.proxy_url + "/api/v1/chat/completions", stop, results,
                       MODEL, max_tokens=6)
    tasks.start(load, name="steady-load")
    try:
        await _until(lambda: len(results) >= 2)
        agent.controller.set_policy({"backend": {"ctx_size": ctx_size}})
        await _until(lambda: switched() and not agent.controller.actuating)
        before = len(results)
        await _until(lambda: len(results) >= before + 2)  # served after the switch too
    finally:
        stop.set()
        await tasks.stop()
    return results


async def test_lemonade_backend_reloads_the_engine_through_its_api(tmp_path: Path) -> None:
    prepared_model()
    with engine_process(tmp_path, "--ctx-size", "1024") as engine:
        backend = LemonadeBackend(engine.url)
        agent = Agent(proxy_settings(engine.url), policy("safe"),
                      controller_settings(tmp_path), backend)
        async with agent:
            # (the backend's own client lives on the controller's loop: read health here)
            flavor = flavor_of(httpx.get(engine.url + "/api/v1/health", timeout=10).json())
            assert flavor.kind == "cpp" and flavor.is_inferos_engine
            results = await _pin_ctx_under_load(agent, 2048, lambda: backend.loads >= 1)
            assert _engine_ctx(engine.url) == 2048
            assert results and all(code == 200 for code in results), results
            assert not agent.proxy.data_plane.snapshot.passthrough
            status = agent.controller.policy_status()["backend.ctx_size"]
            assert status["status"] == "applied" and status["in_effect"] == 2048


async def test_managed_engine_switches_blue_green(tmp_path: Path) -> None:
    prepared_model()
    start_policy = policy("safe")
    backend = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings(ctx_size=1024))
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    async with agent:
        first = await backend.describe()
        assert _engine_ctx(first["url"]) == 1024
        results = await _pin_ctx_under_load(agent, 2048, lambda: backend.switches >= 1)
        after = await backend.describe()
        assert after["pid"] != first["pid"]
        assert after["argv"][after["argv"].index("--ctx-size") + 1] == "2048"
        assert _engine_ctx(agent.runtime.upstream) == 2048
        status = agent.controller.policy_status()["backend.ctx_size"]
        assert status["status"] == "applied" and status["in_effect"] == 2048
        assert results and all(code == 200 for code in results), results
        print(f"\nrequests during the switch: {len(results)}, failed: "
              f"{sum(1 for r in results if r != 200)}")
