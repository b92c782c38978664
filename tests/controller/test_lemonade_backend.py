"""The controller in front of Lemonade servers that differ in what they can do, with test
equipment that answers as each does (tests/controller/lemonade_equipment.py).

Each test reproduces a way the controller used to do harm: reloading a Python Lemonade
that ignores the options (and reporting them in effect), holding /halt and /health behind
a reload, reloading a model name a client had just replaced, reporting a setting applied
that the server never reported back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferos.controller.agent import Agent
from inferos.controller.lemonade_backend import LemonadeBackend
from inferos.tasks import TaskGroup
from tests.controller.conftest import controller_settings, policy, proxy_settings, quick_decisions
from tests.controller.lemonade_equipment import EquipmentLemonade


async def _until(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _agent(lemonade: EquipmentLemonade, tmp_path: Path, **backend: Any) -> Agent:
    return Agent(proxy_settings(lemonade.url), policy("balanced"),
                 controller_settings(tmp_path, decide_every_s=0.2, slow_s=0.05,
                                     decisions=quick_decisions()),
                 LemonadeBackend(lemonade.url, **backend))


async def _chat(agent: Agent, model: str | None = None, **extra: Any) -> tuple[int, Any]:
    body: dict[str, Any] = {"model": model or "Qwen2.5-0.5B-Instruct-GGUF", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}], **extra}
    async with aiohttp.ClientSession() as client:
        async with client.post(agent.proxy.proxy_url + "/api/v1/chat/completions",
                               json=body) as resp:
            await resp.read()
            return resp.status, resp.headers


async def _policy(agent: Agent, patch: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.post(agent.proxy.admin_url + "/v1/policy", json=patch) as resp:
            assert resp.status == 200
            answer: dict[str, Any] = await resp.json()
            return answer


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in (tmp_path / "logs").glob("events_*.jsonl")
            for line in f.read_text().splitlines()]


async def test_python_lemonade_is_never_sent_a_load_and_nothing_is_claimed(
        tmp_path: Path) -> None:
    async with EquipmentLemonade("python") as lemonade, _agent(lemonade, tmp_path) as agent:
        for _ in range(6):  # long prompts: what would make a controller want more context
            assert (await _chat(agent, inferos_test_prompt_tokens=4000))[0] == 200
        answer = await _policy(agent, {"backend": {"ctx_size": 8192, "threads": 2},
                                       "kv": {"recent_window": 128}})
        keys = answer["keys"]
        for key in ("backend.ctx_size", "backend.threads", "kv.cache_type"):
            assert keys[key]["status"] == "not_applicable", key
            assert "only model_name" in keys[key]["reason"]
        assert keys["kv.recent_window"]["status"] == "not_applicable"
        decisions = agent.controller.last_decision
        await _until(lambda: agent.controller.last_decision is not decisions)
        await asyncio.sleep(0.5)  # several decision rounds
        assert lemonade.loads == []
        health = agent.controller.health()
        assert health["backend"]["kind"] == "lemonade-python"
        assert health["backend_settings"] == {}  # nothing read back: nothing claimed
    assert not any(e["event"] == "reconfigured" for e in _events(tmp_path))


async def test_only_generations_for_the_reloading_model_wait(tmp_path: Path) -> None:
    async with EquipmentLemonade("cpp", load_s=1.0) as lemonade, \
            _agent(lemonade, tmp_path, gate_wait_s=30) as agent:
        tasks = TaskGroup()
        held = tasks.start(_chat(agent, inferos_test_hold=True), name="held")
        await _until(lambda: lemonade.holding == 1)
        await _policy(agent, {"backend": {"ctx_size": 8192}})
        plane = agent.proxy.data_plane
        await _until(lambda: bool(plane.snapshot.gates))  # draining the held generation
        async with aiohttp.ClientSession() as client:
            for method, path in (("POST", "/api/v1/halt"), ("GET", "/api/v1/health"),
                                 ("GET", "/api/v1/stats"), ("GET", "/api/v1/models")):
                async with client.request(method, agent.proxy.proxy_url + path) as resp:
                    assert resp.status == 200, path
        assert (await _chat(agent, model="another-model"))[0] == 200
        assert plane.snapshot.gates, "those requests were answered while the gate was closed"
        assert lemonade.halts == 1
        waiting = tasks.start(_chat(agent), name="same-model")
        await asyncio.sleep(0.2)
        assert not waiting.done()  # a generation for the reloading model waits
        lemonade.release.set()
        assert (await held)[0] == 200
        assert (await waiting)[0] == 200
        await _until(lambda: agent.controller.policy_status()["backend.ctx_size"]["status"]
                     == "applied")
        assert agent.controller.policy_status()["backend.ctx_size"]["in_effect"] == 8192
        assert lemonade.loads == [{"model_name": "Qwen2.5-0.5B-Instruct-GGUF",
                                   "ctx_size": 8192}]
        await tasks.stop()
    events = _events(tmp_path)
    done = [e for e in events if e["event"] == "reconfigured"]
    assert done and done[0]["applied"] == {"backend.ctx_size": 8192}
    decision = next(e for e in events if e["event"] == "decision")
    assert "evidence" in decision


async def test_a_reload_past_the_wait_bound_answers_503_with_retry_after(
        tmp_path: Path) -> None:
    async with EquipmentLemonade("cpp", load_s=2.0) as lemonade, \
            _agent(lemonade, tmp_path, gate_wait_s=0.3) as agent:
        await _policy(agent, {"backend": {"ctx_size": 8192}})
        await _until(lambda: bool(agent.proxy.data_plane.snapshot.gates))
        status, headers = await _chat(agent)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        await _until(lambda: not agent.proxy.data_plane.snapshot.gates)
        assert (await _chat(agent))[0] == 200


async def test_a_clients_own_load_wins_over_the_controllers(tmp_path: Path) -> None:
    async with EquipmentLemonade("cpp") as lemonade, _agent(lemonade, tmp_path) as agent:
        tasks = TaskGroup()
        held = tasks.start(_chat(agent, inferos_test_hold=True), name="held")
        await _until(lambda: lemonade.holding == 1)
        await _policy(agent, {"backend": {"ctx_size": 8192}})
        await _until(lambda: bool(agent.proxy.data_plane.snapshot.gates))
        async with aiohttp.ClientSession() as client:  # the client's load is not held
            async with client.post(agent.proxy.proxy_url + "/api/v1/load",
                                   json={"model_name": "Other-Model"}) as resp:
                assert resp.status == 200
        lemonade.release.set()
        assert (await held)[0] == 200
        await _until(lambda: agent.controller.policy_status()["backend.ctx_size"]["status"]
                     == "not_applied" and not agent.controller.health()["controller"][
                         "actuating"])
        # The reconfiguration said why it did nothing; the report then shows that reason, or,
        # once the next decision round has run, the back-off after the client's change.
        refused = [e for e in agent.controller.recent_events if e.get("event") == "not_applied"
                   and "backend.ctx_size" in e.get("keys", {})]
        assert refused and "Other-Model" in refused[0]["keys"]["backend.ctx_size"]["reason"]
        status = agent.controller.policy_status()["backend.ctx_size"]
        assert "Other-Model" in status["reason"] or "a client changed the backend" in \
            status["reason"]
        await asyncio.sleep(0.6)  # further decision rounds back off
        assert lemonade.loads == [{"model_name": "Other-Model"}]  # never the stale name
        assert lemonade.model == "Other-Model" and lemonade.ctx_size == 4096
        assert agent.controller.health()["backend"]["client_changed_s_ago"] is not None
        await tasks.stop()


async def test_a_setting_the_server_does_not_report_back_is_not_applied(
        tmp_path: Path) -> None:
    # This server takes llamacpp_args but never shows them in recipe_options.
    async with EquipmentLemonade("cpp", honours=("ctx_size", "llamacpp_args")) as lemonade, \
            _agent(lemonade, tmp_path) as agent:
        await _policy(agent, {"backend": {"threads": 3}})
        await _until(lambda: len(lemonade.loads) == 1
                     and not agent.controller.health()["controller"]["actuating"])
        await _until(lambda: agent.controller.policy_status()["backend.threads"]["status"]
                     != "pending")
        status = agent.controller.policy_status()["backend.threads"]
        assert status["status"] in ("not_applied", "not_applicable")
        assert "report" in status["reason"]
        await asyncio.sleep(0.6)
        assert len(lemonade.loads) == 1  # not reloaded again for what cannot be verified
    kinds = [e["event"] for e in _events(tmp_path)]
    assert "not_applied" in kinds and "reconfigured" not in kinds


@pytest.mark.parametrize("body", [b"[" * 100000, b'{"model": ' * 5000, b"\xff\xfe"])
async def test_no_body_a_client_sends_trips_the_failsafe(tmp_path: Path, body: bytes) -> None:
    async with EquipmentLemonade("cpp") as lemonade, _agent(lemonade, tmp_path) as agent:
        async with aiohttp.ClientSession() as client:
            async with client.post(agent.proxy.proxy_url + "/api/v1/chat/completions",
                                   data=body, headers={"Content-Type": "application/json"}
                                   ) as resp:
                await resp.read()
        await _until(lambda: agent.controller.facts_dropped >= 1)
        await asyncio.sleep(0.1)
        assert agent.controller.failsafe.trips == 0
        assert not agent.proxy.data_plane.snapshot.passthrough
