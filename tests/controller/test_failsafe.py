"""Fault injection: every control-plane failure puts the proxy in passthrough in under 1 s
(measured and printed), requests keep being served, and the controller recovers.

Faults enter through the controller's public options, not its internals: a system sampler
that raises (an exception in the slow loop), a token counter that blocks (a hung fast
loop, on the default staleness bound), a corrupted snapshot, a backend that fails to start
or dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferos.controller.agent import Agent
from inferos.controller.backend_child import BackendChild, llamacpp_launcher
from inferos.controller.decisions import starting_settings
from inferos.controller.failsafe import FailsafeSettings
from inferos.controller.managed_backend import LLAMACPP, ManagedBackend
from inferos.controller.policy import Policy
from inferos.controller.snapshot import BackendSettings, PolicySnapshot
from inferos.controller.system_sample import SystemSample, SystemSampler
from inferos.proxy.data_plane import DataPlaneSnapshot
from tests.backends import RunningServer, smollm2_gguf
from tests.controller.conftest import controller_settings, policy, proxy_settings

pytestmark = pytest.mark.llamacpp
CHAT = {"model": "smollm2", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi"}]}


async def _chat(agent: Agent, body: Mapping[str, Any] = CHAT) -> tuple[int, bool]:
    """Status, and whether the proxy observed the request (it does not in passthrough)."""
    seen = agent.proxy.observer.records
    async with aiohttp.ClientSession() as client:
        async with client.post(agent.proxy.proxy_url + "/v1/chat/completions",
                               json=body) as r:
            await r.read()
    return r.status, agent.proxy.observer.records > seen


def _plane(agent: Agent) -> DataPlaneSnapshot:
    return agent.proxy.data_plane.snapshot


async def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def _tripped(agent: Agent, timeout_s: float = 30.0) -> tuple[float, str]:
    await _until(lambda: _plane(agent).failsafe_since is not None, timeout_s)
    snapshot = _plane(agent)
    assert snapshot.failsafe_since is not None and snapshot.failsafe_reason is not None
    return snapshot.failsafe_since, snapshot.failsafe_reason


def _without_port(argv: list[str]) -> list[str]:
    at = argv.index("--port")
    return argv[:at] + argv[at + 2:]


def _report(what: str, seconds: float) -> None:
    print(f"\nfault-to-passthrough, {what}: {seconds * 1000:.1f} ms")


async def test_exception_in_a_control_loop(llama_server: RunningServer, tmp_path: Path) -> None:
    raised_at: list[float] = []
    failing = {"on": False}
    real = SystemSampler()

    def sampler() -> SystemSample:
        if failing["on"]:
            raised_at.append(time.monotonic())
            raise RuntimeError("injected")
        return real.sample()

    agent = Agent(proxy_settings(llama_server.url), policy(), controller_settings(tmp_path),
                  sampler=sampler)
    async with agent:
        assert await _chat(agent) == (200, True)
        failing["on"] = True
        since, reason = await _tripped(agent)
        latency = since - raised_at[0]
        _report("exception in a control loop", latency)
        assert 0 <= latency < 1.0 and "exception" in reason
        assert await _chat(agent) == (200, False)  # served, untouched
        # the fault is gone; after a healthy spell, back to observing
        failing["on"] = False
        await _until(lambda: not _plane(agent).passthrough, timeout_s=10)
        assert await _chat(agent) == (200, True)


async def test_hung_controller(llama_server: RunningServer, tmp_path: Path) -> None:
    hung_at: list[float] = []

    def hanging_counter(text: str) -> int:
        hung_at.append(time.monotonic())
        time.sleep(2.0)  # a blocking call: the controller's fast loop stops dead
        return len(text)

    # the default bound, the one this test is about
    settings = controller_settings(tmp_path,
                                   stale_after_s=FailsafeSettings().stale_after_s)
    agent = Agent(proxy_settings(llama_server.url), policy(), settings,
                  token_counters={"hang-me": hanging_counter})
    async with agent:
        await asyncio.sleep(0.5)
        assert agent.controller.failsafe.trips == 0  # a busy machine is not a hang
        await _chat(agent, {**CHAT, "model": "hang-me"})
        since, reason = await _tripped(agent)
        latency = since - hung_at[0]
        _report("hung controller", latency)
        assert 0 <= latency < 1.0 and "stale" in reason
        assert await _chat(agent) == (200, False)  # the data plane never waited for it
        await _until(lambda: not _plane(agent).passthrough, timeout_s=15)


async def test_invalid_snapshot(llama_server: RunningServer, tmp_path: Path) -> None:
    agent = Agent(proxy_settings(llama_server.url), policy(), controller_settings(tmp_path))
    async with agent:
        store = agent.controller.snapshots
        bad = PolicySnapshot(store.current.version + 1, Policy(mode="sideways"),
                             store.current.backend, "corrupted")
        injected = time.monotonic()
        store.current = bad  # what a bug elsewhere could leave behind
        since, reason = await _tripped(agent)
        _report("invalid snapshot", since - injected)
        assert since - injected < 1.0 and "invalid" in reason
        assert await _chat(agent) == (200, False)


async def test_failing_actuator_keeps_the_last_good_backend(tmp_path: Path) -> None:
    gguf = str(smollm2_gguf())
    real = llamacpp_launcher(gguf, "smollm2")
    broken = llamacpp_launcher(str(tmp_path / "missing.gguf"), "smollm2")
    starts: list[int] = []

    def launcher(settings: BackendSettings, live: Mapping[str, Any],
                 port: int) -> BackendChild:
        starts.append(port)
        return (real if len(starts) == 1 else broken)(settings, live, port)

    start_policy = policy("safe")
    backend = ManagedBackend(LLAMACPP, launcher, starting_settings(start_policy, 2048))
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    async with agent:
        good_pid = (await backend.describe())["pid"]
        before = backend.settings
        asked = time.monotonic()
        agent.controller.set_policy({"backend": {"ctx_size": 4096}})
        since, reason = await _tripped(agent, timeout_s=120)
        assert "actuator failed" in reason
        print(f"\nactuator failure detected {(since - asked) * 1000:.0f} ms "
              "after the policy change (includes the failed start)")
        latency = agent.controller.failsafe.last_trip_latency_s
        assert latency is not None and latency < 1.0
        _report("failed actuator", latency)
        assert backend.settings == before and (await backend.describe())["pid"] == good_pid
        assert await _chat(agent) == (200, False)  # the last good backend still serves


async def test_backend_killed_is_restarted_on_its_last_good_settings(tmp_path: Path) -> None:
    start_policy = policy("safe")
    settings = starting_settings(start_policy, 2048)
    backend = ManagedBackend(LLAMACPP, llamacpp_launcher(str(smollm2_gguf()), "smollm2"),
                             settings)
    agent = Agent(proxy_settings(), start_policy, controller_settings(tmp_path), backend)
    async with agent:
        assert await _chat(agent) == (200, True)
        old = await backend.describe()
        killed = time.monotonic()
        os.kill(old["pid"], signal.SIGKILL)
        since, reason = await _tripped(agent)
        _report("backend killed", since - killed)
        assert since - killed < 1.0 and "exited" in reason
        await _until(lambda: backend.child is not None and backend.child.pid not in (
            None, old["pid"]) and agent.proxy.data_plane.upstream == backend.child.url,
            timeout_s=120)
        new = await backend.describe()
        assert _without_port(new["argv"]) == _without_port(old["argv"])
        assert backend.settings == settings
        status, _ = await _chat(agent)
        assert status == 200
