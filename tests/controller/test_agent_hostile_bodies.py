"""Hostile bodies to the agent API get 400 in OpenAI's shape, naming the field, and change
nothing: deep nesting (the README promises 204 or 400, never 500), lone surrogates (which
would otherwise reach metric labels and log files as text no encoder accepts), NaN."""

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


DEEP_LIST = b"[" * 3000 + b"]" * 3000
DEEP_OBJECT = b'{"a":' * 3000 + b"1" + b"}" * 3000


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/run-context", DEEP_LIST, "(body)"),
    ("/v1/run-context", DEEP_OBJECT, "(body)"),
    ("/v1/run-context", b'{"seq_len":1,"batch":1,"model":' + DEEP_LIST + b"}", "(body)"),
    ("/v1/run-context", b'{"seq_len":1,"batch":1,"model":"\\ud800"}', "model"),
    ("/v1/run-context", b'{"seq_len":1,"batch":1,"target_ftl_ms":NaN}', "target_ftl_ms"),
    ("/v1/run-context", b'{"seq_len":1,"batch":1,"\\udc00":1}', "\\udc00"),
    ("/v1/policy", DEEP_LIST, "(body)"),
    ("/v1/policy", b'{"backend":{"provider":"\\ud800"}}', "backend.provider"),
    ("/v1/policy", b'{"kv":{"level_thresholds":{"L1_int8":NaN}}}', "kv.level_thresholds.L1_int8"),
])
async def test_a_hostile_body_is_a_400_naming_the_field(agent: Agent, path: str, body: bytes,
                                                        param: str) -> None:
    version = agent.controller.snapshots.current.version
    async with aiohttp.ClientSession() as client, client.post(
            agent.proxy.admin_url + path, data=body,
            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400, await resp.text()
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert agent.controller.snapshots.current.version == version
