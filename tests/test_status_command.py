"""``inferos status`` against a running agent, as an operator runs it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from inferos.controller.agent import Agent
from tests.backends import RunningServer, free_port
from tests.controller.conftest import controller_settings, policy, proxy_settings


async def _status(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferos.cli", "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.llamacpp
async def test_status_summarizes_a_running_stack(llama_server: RunningServer,
                                                 tmp_path: Path) -> None:
    async with Agent(proxy_settings(llama_server.url), policy("balanced"),
                     controller_settings(tmp_path)) as agent:
        chat = {"model": "smollm2", "max_tokens": 6, "stream": True,
                "messages": [{"role": "user", "content": "Hello"}]}
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.post(agent.proxy.proxy_url + "/v1/chat/completions",
                                       json=chat) as resp:
                    await resp.read()
        admin = agent.proxy.admin_url.removeprefix("http://")
        code, out = await _status("--admin", admin)
        assert code == 0, out
        assert "status      ok" in out and "mode        observe" in out
        assert f"policy      v{agent.controller.snapshots.current.version}" in out
        assert "profile=balanced" in out and llama_server.url in out
        assert "last minute 2 requests, 0 errors" in out and "TTFT p50" in out
        assert f"dashboard   {agent.proxy.admin_url}/" in out
        async with aiohttp.ClientSession() as client:
            await client.post(agent.proxy.admin_url + "/v1/policy", json={"mode": "passthrough"})
        code, out = await _status("--admin", admin)
        assert code == 1 and "status      passthrough" in out


async def test_status_without_an_agent_says_what_to_do() -> None:
    code, out = await _status("--admin", f"127.0.0.1:{free_port()}")
    assert code == 2 and "inferos serve" in out
