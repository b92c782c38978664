"""The engine child that ``inferos serve`` runs answers only those holding its key: the
proxy (which sends it in place of the client's) and the controller (health, stats, live
policy). Another local process cannot go round the proxy's guards to the engine's port.
Issue 11, item 1. On the real model."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import openai
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import engine_launcher
from inferos.controller.managed_backend import API_KEY_ENV, ENGINE, ManagedBackend
from inferos.controller.policy_report import live_keys
from inferos.controller.snapshot import BackendSettings
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.engine.engine_process import MODEL, prepared_model

pytestmark = pytest.mark.model
KEY = "test-engine-key"


async def _until(predicate, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_the_key_goes_to_the_child_by_environment_not_argv() -> None:
    backend = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings(), api_key=KEY)
    child = backend._launch(BackendSettings(), 0)
    assert child.env[API_KEY_ENV] == KEY and KEY not in " ".join(child.argv)
    keyless = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings())
    assert API_KEY_ENV not in keyless._launch(BackendSettings(), 0).env


async def test_only_the_proxy_and_the_controller_reach_the_keyed_engine(
        tmp_path: Path) -> None:
    prepared_model()
    start = policy("balanced")
    backend = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings(ctx_size=1024),
                             live=live_keys(start), api_key=KEY)
    settings = dataclasses.replace(proxy_settings(), upstream_api_key=KEY)
    async with Agent(settings, start, controller_settings(tmp_path), backend) as agent:
        engine = backend.url
        # a stranger on this machine, with or without a guess, is refused
        for headers in ({}, {"Authorization": "Bearer lemonade"}):
            direct = httpx.get(engine + "/api/v1/models", headers=headers, timeout=30)
            assert direct.status_code == 401
            assert direct.json()["error"]["code"] == "invalid_api_key"
        # a client of the proxy is served, whatever key it sends
        client = openai.AsyncOpenAI(base_url=agent.proxy.proxy_url + "/api/v1",
                                    api_key="lemonade", max_retries=0)
        answer = await client.chat.completions.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        await client.close()
        assert answer.choices[0].message.content is not None
        # the controller's own calls carry the key: read-back, stats, the live policy
        await _until(lambda: agent.controller.metrics.backend.latest.scheduler is not None)
        assert agent.controller.health()["backend_settings"]["ctx_size"] == 1024
        await _until(lambda: agent.controller.live_version is not None)
        status = await asyncio.to_thread(httpx.post, agent.proxy.admin_url + "/v1/policy",
                                         json={"kv": {"recent_window": 96}}, timeout=30)
        assert status.json()["keys"]["kv.recent_window"]["status"] == "applied"
