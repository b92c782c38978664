"""The controller in front of the embedded engine on the real model, as ``inferos serve``
runs it: one request is never a reason to restart; live keys reach the running engine
and are read back from its acknowledgement and stats; what the engine cannot apply is
listed with the reason; the quality estimate is the engine's own measurement."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import engine_launcher
from inferos.controller.managed_backend import ENGINE, ManagedBackend
from inferos.controller.policy_report import live_keys
from inferos.controller.snapshot import BackendSettings
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.engine.engine_process import MODEL, prepared_model

pytestmark = pytest.mark.model


async def _until(predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def _post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.post(url, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


def _stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(url + "/api/v1/stats", timeout=10).json()
    return body


@pytest.fixture
async def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    prepared_model()
    start = policy("balanced")
    backend = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings(),
                             live=live_keys(start))
    async with Agent(proxy_settings(), start,
                     controller_settings(tmp_path, decide_every_s=0.2), backend) as running:
        await _until(lambda: running.controller.live_version is not None)
        yield running


async def test_one_request_never_restarts_the_engine(agent: Agent) -> None:
    backend = agent.backend
    assert isinstance(backend, ManagedBackend)
    first = await backend.describe()
    url = agent.proxy.proxy_url + "/api/v1/chat/completions"
    for max_tokens in (8, 2**70):  # a short request, then an absurd max_tokens
        status, _ = await _post(url, {"model": MODEL, "max_tokens": max_tokens,
                                      "messages": [{"role": "user", "content": "Hi there"}]})
        assert status in (200, 400)
    decided = agent.controller.last_decision
    await _until(lambda: agent.controller.last_decision is not decided)
    await asyncio.sleep(1.0)  # several decision rounds
    after = await backend.describe()
    assert backend.switches == 0 and after["pid"] == first["pid"]
    assert agent.controller.health()["backend_settings"]["ctx_size"] == 4096
    assert "not enough evidence" in agent.controller.last_decision.reason  # type: ignore[union-attr]


async def test_live_keys_reach_the_running_engine(agent: Agent) -> None:
    backend = agent.backend
    assert isinstance(backend, ManagedBackend)
    pid = (await backend.describe())["pid"]
    status, answer = await _post(agent.proxy.admin_url + "/v1/policy", {
        "kv": {"recent_window": 128, "level_thresholds": {"L1_int8": 0.8, "L2_int4": 0.6,
                                                          "L3_evict": 0.4}},
        "io": {"host_pool_bytes": "512MiB"}})
    assert status == 200
    keys = answer["keys"]
    for key, value in (("kv.recent_window", 128), ("kv.level_thresholds.L1_int8", 0.8),
                       ("io.host_pool_bytes", 512 * 2**20)):
        assert keys[key]["status"] == "applied", (key, keys[key])
        assert keys[key]["in_effect"] == value and keys[key]["where"] == "engine control API"
    engine_policy = _stats(backend.url)["policy"]
    assert engine_policy["version"] == answer["version"]
    assert engine_policy["kv.recent_window"] == 128
    assert engine_policy["io.host_pool_bytes"] == 512 * 2**20
    assert (await backend.describe())["pid"] == pid  # live: no restart
    # only the controller, which holds the engine's token, may steer it
    from inferos.controller.backend import live_payload

    stranger = httpx.post(backend.url + "/inferos/v1/policy", timeout=10,
                          json=live_payload(live_keys(policy("safe")), 10**6))
    assert stranger.status_code == 403
    # what the engine cannot apply is listed, with the reason
    assert keys["kv.cache_type"]["status"] == "not_applicable"
    assert keys["io.dml_pool_bytes"]["status"] == "not_applicable"
    assert keys["quality.min_accept_rate"]["status"] == "not_applicable"
    assert keys["quality.min_accept_rate"]["reason"]
    assert keys["scheduler.prefill_device"]["status"] in ("not_applicable", "applied")
    if keys["scheduler.prefill_device"]["status"] == "not_applicable":
        assert "dml" in keys["scheduler.prefill_device"]["reason"]


async def test_the_quality_estimate_is_the_engines_measurement(agent: Agent) -> None:
    backend = agent.backend
    assert isinstance(backend, ManagedBackend)
    url = agent.proxy.proxy_url + "/api/v1/chat/completions"
    assert (await _post(url, {"model": MODEL, "max_tokens": 8,
                              "messages": [{"role": "user", "content": "Name a colour."}]})
            )[0] == 200
    await asyncio.sleep(1.5)  # the controller reads the engine's stats every second
    engine = _stats(backend.url)["quality"]
    async with aiohttp.ClientSession() as client:
        async with client.get(agent.proxy.admin_url + "/v1/metrics") as resp:
            metrics = await resp.json()
    assert metrics["quality"]["delta_ppl_est"] == engine["delta_ppl_est"]
    if engine["calibrated"]:
        assert engine["delta_ppl_est"] is not None and engine["delta_ppl_est"] >= 0
    else:
        assert metrics["quality"]["delta_ppl_est"] is None


async def test_an_engine_ahead_of_our_versions_still_takes_the_policy(tmp_path: Path) -> None:
    """An engine that outlived an earlier controller (behind --upstream, after serve was
    restarted) has seen higher versions than ours: the policy must still reach it."""
    from inferos.controller.backend import live_payload
    from inferos.controller.lemonade_backend import LemonadeBackend
    from tests.engine.engine_process import engine_process

    prepared_model()
    with engine_process(tmp_path) as engine:
        earlier = live_payload(live_keys(policy("safe")), 500)
        assert httpx.post(engine.url + "/inferos/v1/policy", json=earlier,
                          timeout=10).status_code == 200
        async with Agent(proxy_settings(engine.url), policy("balanced"),
                         controller_settings(tmp_path), LemonadeBackend(engine.url)) as agent:
            await _until(lambda: agent.controller.live_version is not None)
            status, answer = await _post(agent.proxy.admin_url + "/v1/policy",
                                         {"kv": {"recent_window": 100}})
            assert status == 200
            assert answer["keys"]["kv.recent_window"]["status"] == "applied"
            assert _stats(engine.url)["policy"]["kv.recent_window"] == 100
