"""The agent API as a client uses it: validation names the field and changes nothing;
passthrough switches live and back; run-contexts arrive from the proxy and from callers;
/v1/metrics has the seed's shape with nulls where this machine cannot measure."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferos.controller.agent import Agent
from inferos.controller.system_sample import SystemSample
from tests.backends import RunningServer
from tests.controller.conftest import controller_settings, policy, proxy_settings

pytestmark = pytest.mark.llamacpp
SECRET = "the secret prompt text 4711"


async def _post(url: str, body: object) -> tuple[int, dict | None]:
    async with aiohttp.ClientSession() as client:
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} \
            if isinstance(body, bytes) else {"json": body}
        async with client.post(url, **kwargs) as resp:  # type: ignore[arg-type]
            text = await resp.text()
            is_json = resp.content_type == "application/json" and text
            return resp.status, json.loads(text) if is_json else None


async def _get(url: str) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(url) as resp:
            return await resp.json()


@pytest.fixture
async def agent(llama_server: RunningServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with Agent(proxy_settings(llama_server.url), policy("balanced"),
                     controller_settings(tmp_path)) as running:
        yield running


@pytest.mark.parametrize(("patch", "param"), [
    ({"mode": "fast"}, "mode"),
    ({"profile": "reckless"}, "profile"),
    ({"kv": {"recent_window": "many"}}, "kv.recent_window"),
    ({"kv": {"level_thresholds": {"L1_int8": 0.1}}}, "kv.level_thresholds"),
    ({"kv": {"cache_type": "q3_k"}}, "kv.cache_type"),
    ({"io": {"host_pool_bytes": "lots"}}, "io.host_pool_bytes"),
    ({"scheduler": {"mode": "turbo"}}, "scheduler.mode"),
    ({"scheduler": {"max_batch": 17}}, "scheduler.max_batch"),
    ({"scheduler": {"max_queue": -1}}, "scheduler.max_queue"),
    ({"scheduler": {"tpot_budget_ms": 0}}, "scheduler.tpot_budget_ms"),
    ({"speculation": {"enabled": "yes"}}, "speculation.enabled"),
    ({"speculation": {"max_draft": 65}}, "speculation.max_draft"),
    ({"speculation": {"draft": 4}}, "speculation.draft"),
    ({"backend": {"ctx_size": 16}}, "backend.ctx_size"),
    ({"nonsense": 1}, "nonsense"),
    ([1, 2], "(body)"),
])
async def test_policy_errors_name_the_field_and_change_nothing(agent: Agent, patch: object,
                                                               param: str) -> None:
    before = agent.controller.snapshots.current
    status, body = await _post(agent.proxy.admin_url + "/v1/policy", patch)
    assert status == 400 and body is not None
    assert body["error"]["param"] == param and body["error"]["message"]
    assert agent.controller.snapshots.current is before


async def test_malformed_json_policy_is_a_400(agent: Agent) -> None:
    status, body = await _post(agent.proxy.admin_url + "/v1/policy", b"{not json")
    assert status == 400 and body["error"]["param"] == "(body)"


async def test_valid_policy_publishes_a_new_version(agent: Agent) -> None:
    version = agent.controller.snapshots.current.version
    status, _ = await _post(agent.proxy.admin_url + "/v1/policy",
                            {"profile": "aggressive", "kv": {"recent_window": 96},
                             "io": {"host_pool_bytes": "1GiB"}})
    assert status == 200
    current = agent.controller.snapshots.current
    assert current.version > version
    assert current.policy.profile == "aggressive" and current.policy.kv.recent_window == 96
    assert current.policy.kv.cache_type == "q4_0"  # from the profile
    assert current.policy.io.host_pool_bytes == 2**30
    health = await _get(agent.proxy.admin_url + "/v1/health")
    assert health["policy_version"] == current.version


async def test_passthrough_switches_live_and_back(agent: Agent) -> None:
    chat = {"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    url = agent.proxy.admin_url + "/v1/policy"
    assert (await _post(url, {"mode": "passthrough"}))[0] == 200
    assert (await _get(agent.proxy.admin_url + "/v1/health"))["status"] == "passthrough"
    seen = agent.proxy.observer.records
    assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
    assert agent.proxy.observer.records == seen
    assert (await _post(url, {"mode": "optimize"}))[0] == 200
    assert (await _get(agent.proxy.admin_url + "/v1/health"))["status"] == "ok"
    assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
    assert agent.proxy.observer.records == seen + 1


async def test_run_contexts_from_the_proxy_and_from_callers(agent: Agent) -> None:
    chat = {"model": "smollm2", "max_tokens": 3, "stream": True,
            "messages": [{"role": "user", "content": "x" * 400}]}
    assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
    status, _ = await _post(agent.proxy.admin_url + "/v1/run-context",
                            {"seq_len": 900, "batch": 2, "target_ftl_ms": 200,
                             "quality_budget": 0.05, "model": "smollm2"})
    assert status == 204
    deadline = time.monotonic() + 5
    while len(agent.controller.contexts) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    proxy_ctx, api_ctx = list(agent.controller.contexts)[:2]
    assert proxy_ctx.model == "smollm2" and proxy_ctx.stream and proxy_ctx.max_tokens == 3
    assert proxy_ctx.seq_len_source == "estimate" and proxy_ctx.seq_len == 100
    assert proxy_ctx.concurrency == 1
    assert api_ctx.seq_len == 900 and api_ctx.quality_budget == 0.05
    for bad, param in (({"batch": 1}, "seq_len"), ({"seq_len": -1, "batch": 1}, "seq_len"),
                       ({"seq_len": 1, "batch": 1, "extra": 2}, "extra")):
        status, body = await _post(agent.proxy.admin_url + "/v1/run-context", bad)
        assert status == 400 and body["error"]["param"] == param


async def test_metrics_shape_and_openapi(agent: Agent) -> None:
    chat = {"model": "smollm2", "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
    await asyncio.sleep(0.3)
    metrics = await _get(agent.proxy.admin_url + "/v1/metrics")
    assert set(metrics) == {"tps", "ftl_ms", "p95_ms", "mem", "util", "quality"}
    assert metrics["ftl_ms"] > 0 and metrics["p95_ms"] >= metrics["ftl_ms"]
    assert metrics["mem"]["vram_gb"] is None and metrics["util"]["npu"] is None
    assert metrics["mem"]["host_gb"] > 0 and set(metrics["mem"]["kv_levels"]) == {
        "L0", "L1", "L2", "L3"}
    # No backend is tuned here, so no KV type was verified in effect: nothing measured;
    # and this llama.cpp server does not speculate: no acceptance, never invented.
    assert metrics["quality"] == {"delta_ppl_est": None, "spec_accept": None}
    spec = await _get(agent.proxy.admin_url + "/openapi.json")
    assert {"/v1/policy", "/v1/run-context", "/v1/metrics", "/v1/health"} <= set(spec["paths"])


async def test_prometheus_has_controller_series(agent: Agent) -> None:
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as client:
        async with client.get(agent.proxy.admin_url + "/metrics") as resp:
            text = await resp.text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for name in ("inferos_policy_version", "inferos_passthrough", "inferos_failsafe_tripped",
                 "inferos_control_loop_jitter_seconds_count", "inferos_run_contexts_dropped"):
        assert name in names, name
    loops = {s.labels.get("loop") for f in text_string_to_metric_families(text)
             for s in f.samples if s.name == "inferos_control_loop_jitter_seconds_count"}
    assert {"fast", "mid", "slow", "telemetry"} <= loops


async def test_telemetry_files_have_the_seed_fields_and_no_user_text(
    llama_server: RunningServer, tmp_path: Path
) -> None:
    async with Agent(proxy_settings(llama_server.url), policy("balanced"),
                     controller_settings(tmp_path, telemetry_s=0.2)) as agent:
        chat = {"model": "smollm2", "max_tokens": 4, "stream": True,
                "messages": [{"role": "user", "content": SECRET}]}
        assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
        await _post(agent.proxy.admin_url + "/v1/policy", {"kv": {"recent_window": 80}})
        await asyncio.sleep(0.8)
    logs = tmp_path / "logs"
    metric_files = list(logs.glob("metrics_*.jsonl"))
    event_files = list(logs.glob("events_*.jsonl"))
    assert metric_files and event_files
    lines = [json.loads(x) for x in metric_files[0].read_text().splitlines()]
    fields = ("t", "model", "seq_len", "batch", "tps", "ftl", "p95", "vram", "host_mem",
              "npu_util", "igpu_util", "kv_L0", "kv_L1", "kv_L2", "kv_L3", "delta_ppl_est",
              "spec_accept")
    assert all(tuple(line) == fields for line in lines)
    assert all(line["spec_accept"] is None for line in lines)  # llama.cpp, not speculating
    assert any(line["model"] == "smollm2" and line["ftl"] for line in lines)
    events = [json.loads(x)["event"] for x in event_files[0].read_text().splitlines()]
    assert "policy" in events
    for f in logs.iterdir():
        assert SECRET not in f.read_text() and "secret" not in f.read_text()


async def test_a_hot_machine_sheds_load(llama_server: RunningServer, tmp_path: Path) -> None:
    hot = {"on": False}

    def sampler() -> SystemSample:  # injected fault: a temperature excursion
        return SystemSample(at=time.time(), cpu_percent=50, cpu_count=2, host_mem_used_gb=1,
                            host_mem_percent=40, process_rss_gb=0.1,
                            temperature_c=99.0 if hot["on"] else 50.0, temperature_high_c=90.0)

    async with Agent(proxy_settings(llama_server.url), policy("balanced"),
                     controller_settings(tmp_path, unshed_after_s=0.3),
                     sampler=sampler) as agent:
        hot["on"] = True
        deadline = time.monotonic() + 5
        while agent.proxy.data_plane.snapshot.limit is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert agent.proxy.data_plane.snapshot.limit == 1
        assert (await _get(agent.proxy.admin_url + "/v1/health"))["status"] == "degraded"
        chat = {"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
        assert (await _post(agent.proxy.proxy_url + "/v1/chat/completions", chat))[0] == 200
        hot["on"] = False
        deadline = time.monotonic() + 5
        while agent.proxy.data_plane.snapshot.limit is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert agent.proxy.data_plane.snapshot.limit is None
    events = [json.loads(x)["event"] for f in (tmp_path / "logs").glob("events_*.jsonl")
              for x in f.read_text().splitlines()]
    assert "shed" in events and "unshed" in events
