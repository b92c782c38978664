"""The controller in front of the embedded engine on the real model, as ``inferos serve``
runs it: one request is never a reason to restart; live keys reach the running engine
and are read back from its acknowledgement and stats; what the engine cannot apply is
listed with the reason; the quality estimate is the engine's own measurement."""

from __future__ import annotations

import asyncio
import json
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
    assert keys["quality.min_accept_rate"]["status"] == "applied"  # the engine speculates
    assert keys["scheduler.prefill_device"]["status"] in ("not_applicable", "applied")
    if keys["scheduler.prefill_device"]["status"] == "not_applicable":
        assert "dml" in keys["scheduler.prefill_device"]["reason"]


async def test_scheduling_keys_reach_the_running_engine(agent: Agent) -> None:
    backend = agent.backend
    assert isinstance(backend, ManagedBackend)
    pid = (await backend.describe())["pid"]
    wanted = {"scheduler.max_batch": 4, "scheduler.max_queue": 16,
              "scheduler.tpot_budget_ms": 50.0, "speculation.enabled": False,
              "speculation.max_draft": 4}
    status, answer = await _post(agent.proxy.admin_url + "/v1/policy", {
        "scheduler": {"max_batch": 4, "max_queue": 16, "tpot_budget_ms": 50},
        "speculation": {"enabled": False, "max_draft": 4}})
    assert status == 200
    engine_policy = _stats(backend.url)["policy"]
    assert engine_policy["version"] == answer["version"]
    for key, value in wanted.items():
        outcome = answer["keys"][key]
        assert outcome["status"] == "applied", (key, outcome)
        assert outcome["in_effect"] == value and outcome["where"] == "engine control API"
        assert engine_policy[key] == value, key
    # a bad value is refused before anything is sent: 400 naming the key, nothing changed
    for patch, param in (({"scheduler": {"max_batch": 17}}, "scheduler.max_batch"),
                         ({"speculation": {"enabled": 1}}, "speculation.enabled")):
        status, error = await _post(agent.proxy.admin_url + "/v1/policy", patch)
        assert status == 400 and error["error"]["param"] == param
    assert _stats(backend.url)["policy"]["version"] == answer["version"]
    assert (await backend.describe())["pid"] == pid  # live: no restart


async def test_a_mode_switch_reaches_the_engine_and_the_users_word_ends_it(
        agent: Agent) -> None:
    """The plumbing of a switch, on the real engine. This machine has one device, so the
    decision never makes one (below): the test publishes one as the decision would, with
    the mode that runs here, and a policy change carries it to the engine."""
    from inferos.controller.snapshot import ModeSwitch

    controller = agent.controller
    current = controller.snapshots.current
    assert current.policy.scheduler.mode == "hybrid"
    switch = ModeSwitch("cpu_only", "hybrid", "queue", "a queue for 10 s (test)")
    controller.snapshots.publish(current.policy, current.backend, "test", mode_switch=switch)
    status, answer = await _post(agent.proxy.admin_url + "/v1/policy",
                                 {"kv": {"recent_window": 100}})
    assert status == 200 and controller.snapshots.current.mode_switch == switch
    mode = answer["keys"]["scheduler.mode"]
    assert (mode["status"], mode["value"], mode["in_effect"]) == ("not_applied", "hybrid",
                                                                  "cpu_only")
    assert "a queue for 10 s (test)" in mode["reason"]
    assert _stats(agent.backend.url)["policy"]["scheduler.mode"] == "cpu_only"  # type: ignore[union-attr]
    status, answer = await _post(agent.proxy.admin_url + "/v1/policy",
                                 {"scheduler": {"mode": "hybrid"}})
    assert status == 200 and controller.snapshots.current.mode_switch is None
    mode = answer["keys"]["scheduler.mode"]
    assert mode["value"] == "hybrid" and "instead" not in mode["reason"]
    assert mode["status"] in ("applied", "not_applicable"), mode


async def test_on_this_machine_the_slow_loop_never_switches_modes(tmp_path: Path) -> None:
    """Hot (an injected sensor reading: this machine has none) for longer than the
    decision needs, on the real engine: with one device nothing switches, and the reason
    is said once."""
    from inferos.controller.scheduler_mode import NOT_SWITCHED, ModeSettings
    from inferos.controller.system_sample import SystemSample

    def hot() -> SystemSample:
        return SystemSample(at=time.time(), cpu_percent=50, cpu_count=2, host_mem_used_gb=1,
                            host_mem_percent=40, process_rss_gb=0.1, temperature_c=99.0,
                            temperature_high_c=90.0)

    prepared_model()
    start = policy("balanced")
    backend = ManagedBackend(ENGINE, engine_launcher(MODEL), BackendSettings(),
                             live=live_keys(start))
    settings = controller_settings(tmp_path, mode=ModeSettings(sustain_s=0.5, calm_s=1.0))
    async with Agent(proxy_settings(), start, settings, backend, sampler=hot) as running:
        controller = running.controller
        await _until(lambda: controller.modes.last is not None
                     and controller.modes.last.code in NOT_SWITCHED)
        await asyncio.sleep(2.0)  # more decisions, on the same evidence
        assert controller.snapshots.current.mode_switch is None
        health = controller.health()["scheduler"]
        assert health["mode_switch"] is None
        assert health["last_mode_decision"]["mode"] is None
        assert health["last_mode_decision"]["trigger"] == "thermal"
        placement = (health["engine"] or {}).get("placement")
        if placement is not None:  # the engine reports its scheduler: hybrid fell back
            assert placement["fell_back"] is True and placement["reason"]
    events = [json.loads(line) for f in (tmp_path / "logs").glob("events_*.jsonl")
              for line in f.read_text().splitlines()]
    assert not [e for e in events if e["event"] == "mode_switched"]
    said = [e["code"] for e in events if e["event"] == "mode_not_switched"]
    assert said and len(said) == len(set(said)), said


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


async def test_speculation_acceptance_is_the_engines_count(agent: Agent,
                                                          tmp_path: Path) -> None:
    """A task grounded in its input (copy real text) at temperature 0, through the proxy:
    the engine drafts from the prompt, and its acceptance is /v1/metrics' spec_accept, the
    telemetry line's and a Prometheus series; the request's own is in its histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    backend = agent.backend
    assert isinstance(backend, ManagedBackend)
    text = Path("/usr/share/common-licenses/Apache-2.0").read_text()[:400]
    async with aiohttp.ClientSession() as client:
        async with client.post(agent.proxy.proxy_url + "/api/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 48, "temperature": 0, "stream": True,
                "messages": [{"role": "user",
                              "content": "Copy this text exactly:\n\n" + text}]}) as resp:
            assert resp.status == 200
            streamed = await resp.text()
    assert '"draft_n"' in streamed  # the engine's timings, as llama.cpp names them

    async def metrics() -> dict[str, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.get(agent.proxy.admin_url + "/v1/metrics") as resp:
                return await resp.json()  # type: ignore[no-any-return]

    # The engine counts as it verifies, so a read during the stream saw part of it; the
    # request is over now and nothing else runs: these counts are final.
    speculation = _stats(backend.url)["scheduler"]["speculation"]
    assert speculation["drafted"] > 0
    accept = speculation["accepted"] / speculation["drafted"]
    deadline = time.monotonic() + 60
    while (await metrics())["quality"]["spec_accept"] != accept:
        assert time.monotonic() < deadline, "spec_accept is not the engine's count"
        await asyncio.sleep(0.2)
    assert 0.0 <= accept <= 1.0
    assert agent.controller.health()["last_minute"]["spec_accept"] is not None

    async with aiohttp.ClientSession() as client:
        async with client.get(agent.proxy.admin_url + "/metrics") as resp:
            samples = {s.name: s.value for f in text_string_to_metric_families(
                await resp.text()) for s in f.samples}
    assert samples["inferos_spec_accept_ratio"] == accept
    assert samples["inferos_spec_drafted_tokens_total"] == speculation["drafted"]
    assert samples["inferos_spec_accepted_tokens_total"] == speculation["accepted"]
    assert samples["inferos_request_spec_accept_ratio_count"] == 1
    for name in ("inferos_scheduler_batch_occupancy", "inferos_scheduler_queue_depth",
                 "inferos_scheduler_queue_wait_p50_seconds",
                 "inferos_scheduler_prefill_chunks_total", "inferos_scheduler_max_batch"):
        assert name in samples, name
    assert samples["inferos_scheduler_prefill_chunks_total"] >= 1

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for f in (tmp_path / "logs").glob("metrics_*.jsonl")
                for line in f.read_text().splitlines()]

    await _until(lambda: any(line["spec_accept"] == accept for line in logged()))
    phrase = max(text.splitlines(), key=len).strip()
    for f in (tmp_path / "logs").iterdir():  # the prompt is never written anywhere
        assert phrase not in f.read_text()


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
