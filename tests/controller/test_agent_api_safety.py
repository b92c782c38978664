"""A web page in the user's browser can reach 127.0.0.1: the agent API refuses state
changes that a page could send (no JSON content type, a foreign Origin, a rebinding Host,
a missing token), and a body a client crafted cannot raise anywhere."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from inferos.controller.agent import Agent
from tests.controller.conftest import controller_settings, policy, proxy_settings


@pytest.fixture
async def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with Agent(proxy_settings("http://127.0.0.1:9"), policy("balanced"),
                     controller_settings(tmp_path), admin_token=None) as running:
        yield running


async def _post(url: str, data: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.post(url, data=data, headers=headers) as resp:
            await resp.read()
            return resp.status


@pytest.mark.parametrize(("headers", "status"), [
    ({"Content-Type": "text/plain"}, 415),  # a page's simple request, no preflight
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
    ({"Content-Type": "application/json", "Host": "evil.example:8021"}, 403),
])
async def test_state_changes_a_page_could_send_are_refused(agent: Agent, headers: dict[str, str],
                                                           status: int) -> None:
    version = agent.controller.snapshots.current.version
    got = await _post(agent.proxy.admin_url + "/v1/policy", b'{"mode": "passthrough"}', headers)
    assert got == status
    assert agent.controller.snapshots.current.version == version
    assert not agent.proxy.data_plane.snapshot.passthrough


async def test_the_admins_own_origin_is_allowed(agent: Agent) -> None:
    # Another port on this machine is another origin (tests/controller/test_admin_guard.py).
    got = await _post(agent.proxy.admin_url + "/v1/policy", b'{"kv": {"recent_window": 96}}',
                      {"Content-Type": "application/json", "Origin": agent.proxy.admin_url})
    assert got == 200


async def test_the_token_is_required_when_set(tmp_path: Path) -> None:
    async with Agent(proxy_settings("http://127.0.0.1:9"), policy("balanced"),
                     controller_settings(tmp_path), admin_token="s3cret") as agent:
        url = agent.proxy.admin_url + "/v1/policy"
        body = b'{"kv": {"recent_window": 96}}'
        assert await _post(url, body, {"Content-Type": "application/json"}) == 401
        assert await _post(url, body, {"Content-Type": "application/json",
                                       "X-Inferos-Token": "s3cret"}) == 200


async def test_a_deeply_nested_body_is_a_400_not_a_crash(agent: Agent) -> None:
    for path in ("/v1/policy", "/v1/run-context"):
        got = await _post(agent.proxy.admin_url + path, b"[" * 50000,
                          {"Content-Type": "application/json"})
        assert got == 400
    assert agent.controller.failsafe.trips == 0
