"""Changing KV types and context through the agent API reaches a real llama.cpp server,
blue/green, while requests keep flowing: none fails. Both servers the llamacpp backend
runs: llama.cpp's own llama-server (where it is built) and llama-cpp-python's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import (
    Launcher,
    llama_cpp_python_launcher,
    llama_server_launcher,
    read_llamacpp_argv,
)
from inferos.controller.cache_types import by_name
from inferos.controller.decisions import starting_settings
from inferos.controller.llama_server import find_llama_server
from inferos.controller.managed_backend import LLAMACPP, ManagedBackend
from inferos.tasks import TaskGroup
from tests.backends import smollm2_gguf
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.controller.steady_load import steady_load

pytestmark = pytest.mark.llamacpp
BINARY = find_llama_server()


def _launcher(server: str) -> Launcher:
    if server == "llama-cpp-python":
        return llama_cpp_python_launcher(str(smollm2_gguf()), "smollm2")
    if BINARY is None:
        pytest.skip("llama-server is not built: run scripts/build-llama-server.sh "
                    "(scripts/test builds it)")
    return llama_server_launcher(BINARY, str(smollm2_gguf()), "smollm2")


@pytest.mark.parametrize("server", ["llama-server", "llama-cpp-python"])
async def test_policy_change_reaches_the_backend_with_zero_failed_requests(
    tmp_path: Path, server: str,
) -> None:
    start_policy = policy("safe")  # f16 KV
    settings = starting_settings(start_policy, ctx_size=2048)
    backend = ManagedBackend(LLAMACPP, _launcher(server), settings)
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    # The balanced profile's q8_0 is taken only if its measured cost fits the budget.
    want_q8 = (by_name("q8_0").delta_ppl is not None
               and by_name("q8_0").delta_ppl <= 0.5)  # type: ignore[operator]
    async with agent:
        first = await backend.describe()
        assert first["server"].startswith(server)
        assert read_llamacpp_argv(first["argv"])["cache_type"] == "f16"
        stop, results = asyncio.Event(), []
        tasks = TaskGroup()
        load = steady_load(agent.proxy.proxy_url + "/v1/chat/completions", stop, results,
                           "smollm2")
        tasks.start(load, name="steady-load")
        while len(results) < 3:
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as client:
            async with client.post(agent.proxy.admin_url + "/v1/policy", json={
                    "profile": "balanced", "backend": {"ctx_size": 4096}}) as resp:
                assert resp.status == 200
                answer = await resp.json()
        assert answer["keys"]["kv.recent_window"]["status"] == "not_applicable"
        assert "llama.cpp" in answer["keys"]["kv.recent_window"]["reason"]
        for _ in range(600):
            if backend.switches >= 1 and not agent.controller.actuating:
                break
            await asyncio.sleep(0.1)
        before = len(results)
        while len(results) < before + 3:  # a few more requests on the new backend
            await asyncio.sleep(0.05)
        stop.set()
        while len(tasks):
            await asyncio.sleep(0.05)
        after = await backend.describe()
        started_with = read_llamacpp_argv(after["argv"])  # either server's command line
        if want_q8:
            assert started_with["cache_type"] == "q8_0"  # K and V both
            assert started_with["flash_attn"]
        assert started_with["ctx_size"] == 4096
        assert after["pid"] != first["pid"]
        assert results and all(code == 200 for code in results), results
        async with aiohttp.ClientSession() as client:
            async with client.get(agent.proxy.admin_url + "/v1/health") as resp:
                health = await resp.json()
        assert health["status"] == "ok"
        assert health["backend_settings"]["ctx_size"] == 4096  # read back from the process
        assert health["backend"]["version"].startswith(server)
        assert health["policy_status"]["backend.ctx_size"]["status"] == "applied"
        if want_q8:
            assert health["backend_settings"]["cache_type"] == "q8_0"
            assert health["policy_status"]["kv.cache_type"]["status"] == "applied"
    events = [json.loads(line) for f in (tmp_path / "logs").glob("events_*.jsonl")
              for line in f.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "policy" in kinds and "decision" in kinds and "reconfigured" in kinds
    print(f"\nrequests during the switch: {len(results)}, failed: "
          f"{sum(1 for r in results if r != 200)}")
