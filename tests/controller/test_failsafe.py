"""Fault injection: every control-plane failure puts the proxy in passthrough in under 1 s
(measured and printed), requests keep being served, and the controller recovers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import LLAMACPP_FIELDS, BackendChild, llamacpp_launcher
from inferos.controller.decisions import decide
from inferos.controller.managed_backend import ManagedBackend
from inferos.controller.policy import Policy
from inferos.controller.snapshot import BackendSettings, PolicySnapshot
from tests.backends import RunningServer, smollm2_gguf
from tests.controller.conftest import controller_settings, initial_settings, policy, proxy_settings

pytestmark = pytest.mark.llamacpp
CHAT = {"model": "smollm2", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi"}]}


async def _chat(agent: Agent) -> tuple[int, bool]:
    """Status, and whether the proxy observed the request (it does not in passthrough)."""
    seen = agent.proxy.observer.records
    async with aiohttp.ClientSession() as client:
        async with client.post(agent.proxy.proxy_url + "/v1/chat/completions", json=CHAT) as r:
            await r.read()
    return r.status, agent.proxy.observer.records > seen


async def _until(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def _report(what: str, seconds: float) -> None:
    print(f"\nfault-to-passthrough, {what}: {seconds * 1000:.1f} ms")


async def test_exception_in_a_decision(llama_server: RunningServer, tmp_path: Path) -> None:
    raised_at: list[float] = []

    def failing_decide(current: BackendSettings, pol: Policy, seen):  # type: ignore[no-untyped-def]
        if pol.kv.recent_window == 77:
            raised_at.append(time.monotonic())
            raise RuntimeError("injected")
        return decide(current, pol, seen)

    agent = Agent(proxy_settings(llama_server.url), policy(), controller_settings(tmp_path),
                  decide_fn=failing_decide)
    async with agent:
        assert await _chat(agent) == (200, True)
        agent.controller.set_policy({"kv": {"recent_window": 77}})
        mode = agent.runtime.mode
        await _until(lambda: mode.failsafe_since is not None)
        latency = mode.failsafe_since - raised_at[0]
        _report("exception in a decision", latency)
        assert latency < 1.0
        assert "exception" in mode.failsafe_reason
        assert await _chat(agent) == (200, False)  # served, untouched
        # the fault is gone once the policy is fixed; after a healthy spell, back to observing
        agent.controller.set_policy({"kv": {"recent_window": 64}})
        await _until(lambda: not mode.passthrough, timeout_s=10)
        assert await _chat(agent) == (200, True)


async def test_hung_controller(llama_server: RunningServer, tmp_path: Path) -> None:
    hung_at: list[float] = []

    def hanging_decide(current: BackendSettings, pol: Policy, seen):  # type: ignore[no-untyped-def]
        if pol.kv.recent_window == 78 and not hung_at:
            hung_at.append(time.monotonic())
            time.sleep(2.0)  # a blocking call: the controller's loop stops dead
        return decide(current, pol, seen)

    agent = Agent(proxy_settings(llama_server.url), policy(),
                  controller_settings(tmp_path, stale_after_s=0.25), decide_fn=hanging_decide)
    async with agent:
        agent.controller.set_policy({"kv": {"recent_window": 78}})
        mode = agent.runtime.mode
        await _until(lambda: mode.failsafe_since is not None)
        latency = mode.failsafe_since - hung_at[0]
        _report("hung controller", latency)
        assert latency < 1.0 and "stale" in mode.failsafe_reason
        assert await _chat(agent) == (200, False)  # the data plane never waited for it
        await _until(lambda: not mode.passthrough, timeout_s=15)


async def test_invalid_snapshot(llama_server: RunningServer, tmp_path: Path) -> None:
    agent = Agent(proxy_settings(llama_server.url), policy(), controller_settings(tmp_path))
    async with agent:
        store = agent.controller.snapshots
        bad = PolicySnapshot(store.current.version + 1, Policy(mode="sideways"),
                             store.current.backend, "corrupted")
        injected = time.monotonic()
        store.current = bad  # what a bug elsewhere could leave behind
        mode = agent.runtime.mode
        await _until(lambda: mode.failsafe_since is not None)
        _report("invalid snapshot", mode.failsafe_since - injected)
        assert mode.failsafe_since - injected < 1.0 and "invalid" in mode.failsafe_reason
        assert await _chat(agent) == (200, False)


async def test_failing_actuator_keeps_the_last_good_backend(tmp_path: Path) -> None:
    gguf = str(smollm2_gguf())
    real = llamacpp_launcher(gguf, "smollm2")
    broken = llamacpp_launcher(str(tmp_path / "missing.gguf"), "smollm2")
    starts: list[int] = []

    def launcher(settings: BackendSettings, port: int) -> BackendChild:
        starts.append(port)
        return (real if len(starts) == 1 else broken)(settings, port)

    start_policy = policy("safe")
    backend = ManagedBackend(launcher, initial_settings(start_policy),
                             relevant_fields=LLAMACPP_FIELDS)
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    backend.attach(agent.runtime)
    async with agent:
        good_pid = (await backend.describe())["pid"]
        before = backend.settings
        asked = time.monotonic()
        agent.controller.set_policy({"backend": {"ctx_size": 4096}})
        mode = agent.runtime.mode
        await _until(lambda: mode.failsafe_since is not None, timeout_s=120)
        assert "actuator failed" in mode.failsafe_reason
        print(f"\nactuator failure detected {(mode.failsafe_since - asked) * 1000:.0f} ms "
              "after the policy change (includes the failed start)")
        assert agent.controller.failsafe.last_trip_latency_s < 1.0
        _report("failed actuator", agent.controller.failsafe.last_trip_latency_s)
        assert backend.settings == before and (await backend.describe())["pid"] == good_pid
        assert await _chat(agent) == (200, False)  # the last good backend still serves


async def test_backend_killed_is_restarted_on_its_last_good_settings(tmp_path: Path) -> None:
    start_policy = policy("safe")
    backend = ManagedBackend(llamacpp_launcher(str(smollm2_gguf()), "smollm2"),
                             initial_settings(start_policy), relevant_fields=LLAMACPP_FIELDS)
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    backend.attach(agent.runtime)
    async with agent:
        assert await _chat(agent) == (200, True)
        old = await backend.describe()
        killed = time.monotonic()
        os.kill(old["pid"], signal.SIGKILL)
        mode = agent.runtime.mode
        await _until(lambda: mode.failsafe_since is not None)
        _report("backend killed", mode.failsafe_since - killed)
        assert mode.failsafe_since - killed < 1.0 and "exited" in mode.failsafe_reason
        await _until(lambda: backend.switches >= 1, timeout_s=120)
        new = await backend.describe()
        assert new["pid"] != old["pid"] and new["argv"][1:] != []
        status, _ = await _chat(agent)
        assert status == 200
