"""The admin listener refuses what a web page or a rebinding DNS name could send, answers
tools and its own origin, keeps reads open for scrapers, and takes a token
(controller/admin_guard.py). Issue 11, item 1: the issue's curl answered 204."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferos.controller.admin_guard import check_exposure
from inferos.controller.agent import Agent
from inferos.controller.config import load_config
from inferos.errors import ConfigError
from inferos.proxy.settings import HostPort
from tests.controller.conftest import controller_settings, policy, proxy_settings
from tests.serve_child import child_env

# Nothing listens there: these tests need the admin listener only.
NO_BACKEND = "http://127.0.0.1:9"
JSON = {"Content-Type": "application/json"}
CHANGE = b'{"mode": "passthrough"}'


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with Agent(proxy_settings(NO_BACKEND), policy("balanced"),
                     controller_settings(tmp_path)) as running:
        yield running


async def _call(method: str, url: str, headers: dict[str, str],
                data: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, url, data=data, headers=headers) as resp:
            body = await resp.json(content_type=None) if resp.status >= 400 else None
            await resp.read()
            return resp.status, body


def _unchanged(agent: Agent, version: int) -> bool:
    return (agent.controller.snapshots.current.version == version
            and not agent.proxy.data_plane.snapshot.passthrough)


def _openai_shaped(body: Any, code: str) -> bool:
    error = body["error"]
    return set(error) == {"message", "type", "param", "code"} and error["code"] == code


async def test_the_issues_curl_no_longer_changes_the_mode(agent: Agent) -> None:
    version = agent.controller.snapshots.current.version
    status, body = await _call("POST", agent.proxy.admin_url + "/v1/policy", {
        "Content-Type": "text/plain", "Origin": "http://evil.example",
        "Host": "evil.example"}, CHANGE)
    assert status == 403 and _openai_shaped(body, "forbidden_host")
    assert _unchanged(agent, version)


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
    ({**JSON, "Origin": "http://evil.example"}, 403, "forbidden_origin"),
    # another page on this machine is another origin: a browser keeps them apart too
    ({**JSON, "Origin": "http://127.0.0.1:3000"}, 403, "forbidden_origin"),
    ({**JSON, "Origin": "null"}, 403, "forbidden_origin"),  # sandboxed frames, file://
    ({**JSON, "Host": "evil.example:8021"}, 403, "forbidden_host"),
    ({**JSON, "Host": "127.0.0.1.evil.example"}, 403, "forbidden_host"),
    ({**JSON, "Host": ""}, 403, "forbidden_host"),
])
@pytest.mark.parametrize("path", ["/v1/policy", "/v1/run-context"])
async def test_writes_a_page_could_send_are_refused(agent: Agent, path: str,
                                                    headers: dict[str, str], status: int,
                                                    code: str) -> None:
    version = agent.controller.snapshots.current.version
    got, body = await _call("POST", agent.proxy.admin_url + path, headers,
                            b'{"seq_len": 10, "batch": 1}' if "run" in path else CHANGE)
    assert (got, body["error"]["code"]) == (status, code)
    assert _openai_shaped(body, code)
    assert _unchanged(agent, version)


@pytest.mark.parametrize("extra", [
    {},  # a tool: no Origin at all
    {"Origin": "{admin}"},  # the admin's own origin
    {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"},
    {"Host": "[::1]:{port}"},
    {"Host": "127.0.0.2:{port}"},
])
async def test_tools_and_the_admins_own_origin_may_write(agent: Agent,
                                                         extra: dict[str, str]) -> None:
    port = str(agent.proxy.admin.port)
    headers = {**JSON, **{k: v.format(admin=agent.proxy.admin_url, port=port)
                          for k, v in extra.items()}}
    status, _ = await _call("POST", agent.proxy.admin_url + "/v1/policy", headers,
                            b'{"kv": {"recent_window": 96}}')
    assert status == 200


@pytest.mark.parametrize("path", ["/v1/health", "/metrics", "/v1/metrics", "/openapi.json"])
async def test_reads_get_the_host_check_but_need_no_token(tmp_path: Path, path: str) -> None:
    async with Agent(proxy_settings(NO_BACKEND), policy("balanced"),
                     controller_settings(tmp_path), admin_token="s3cret") as agent:
        url = agent.proxy.admin_url + path
        assert (await _call("GET", url, {}))[0] == 200  # Prometheus sends no token
        status, body = await _call("GET", url, {"Host": "rebound.example:8021"})
        assert status == 403 and _openai_shaped(body, "forbidden_host")


async def test_the_token_is_a_bearer_token(tmp_path: Path) -> None:
    async with Agent(proxy_settings(NO_BACKEND), policy("balanced"),
                     controller_settings(tmp_path), admin_token="s3cret") as agent:
        url = agent.proxy.admin_url + "/v1/policy"
        body = b'{"kv": {"recent_window": 96}}'
        for refused in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            status, error = await _call("POST", url, {**JSON, **refused}, body)
            assert status == 401 and _openai_shaped(error, "invalid_admin_token")
        assert (await _call("POST", url, {**JSON, "Authorization": "Bearer s3cret"},
                            body))[0] == 200
        # the older header still works for callers written before
        assert (await _call("POST", url, {**JSON, "X-Inferos-Token": "s3cret"}, body))[0] == 200
        # a token does not make a page's request acceptable
        status, error = await _call("POST", url, {**JSON, "Authorization": "Bearer s3cret",
                                                  "Origin": "http://evil.example"}, body)
        assert status == 403 and _openai_shaped(error, "forbidden_origin")


async def test_allow_lists_admit_named_hosts_and_origins(tmp_path: Path) -> None:
    settings = dataclasses.replace(proxy_settings(NO_BACKEND), allowed_hosts=("inferos.lan",))
    async with Agent(settings, policy("balanced"), controller_settings(tmp_path),
                     allowed_origins=("http://dashboard.lan:3000",)) as agent:
        url = agent.proxy.admin_url + "/v1/policy"
        body = b'{"kv": {"recent_window": 96}}'
        ok = {**JSON, "Host": "inferos.lan:8021", "Origin": "http://dashboard.lan:3000"}
        assert (await _call("POST", url, ok, body))[0] == 200
        assert (await _call("POST", url, {**ok, "Origin": "http://dashboard.lan:4000"},
                            body))[0] == 403
        assert (await _call("POST", url, {**ok, "Host": "other.lan"}, body))[0] == 403


async def test_any_origin_when_the_allow_list_says_star(tmp_path: Path) -> None:
    async with Agent(proxy_settings(NO_BACKEND), policy("balanced"),
                     controller_settings(tmp_path), allowed_origins=("*",)) as agent:
        status, _ = await _call("POST", agent.proxy.admin_url + "/v1/policy",
                                {**JSON, "Origin": "http://anywhere.example"},
                                b'{"kv": {"recent_window": 96}}')
        assert status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "inferos.lan"])
def test_an_admin_beyond_loopback_needs_a_token(tmp_path: Path, host: str) -> None:
    settings = dataclasses.replace(proxy_settings(NO_BACKEND), admin=HostPort(host, 0))
    with pytest.raises(ConfigError, match="listen.admin_token"):
        Agent(settings, policy("balanced"), controller_settings(tmp_path))
    check_exposure(HostPort(host, 8021), "s3cret")  # with one, it may


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_a_loopback_admin_needs_none(host: str) -> None:
    check_exposure(HostPort(host, 8021), None)


def test_serve_refuses_to_start_an_exposed_admin_without_a_token(tmp_path: Path) -> None:
    env = child_env()
    done = subprocess.run([sys.executable, "-m", "inferos.cli", "serve", "--upstream",
                           NO_BACKEND, "--admin", "0.0.0.0:0", "--listen", "127.0.0.1:0"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "listen.admin_token" in done.stderr and "INFEROS_ADMIN_TOKEN" in done.stderr


def test_the_settings_come_from_the_environment_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("listen:\n  allowed_origins: [http://dash.lan:3000]\n"
                    "proxy:\n  deny_paths: [/internal/*, /api/v1/pull]\n")
    config = load_config(file, env={"INFEROS_ADMIN_TOKEN": "t0k",
                                    "INFEROS_ALLOWED_HOSTS": "inferos.lan, box.local"})
    assert config.get("listen.admin_token") == "t0k"
    assert config.get("listen.allowed_origins") == ("http://dash.lan:3000",)
    settings = config.proxy_settings(NO_BACKEND)
    assert settings.allowed_hosts == ("inferos.lan", "box.local")
    assert settings.deny_paths == ("/internal/*", "/api/v1/pull")
    assert load_config(None, env={}).proxy_settings(NO_BACKEND).deny_paths == ("/internal/*",)
    with pytest.raises(ConfigError, match="proxy.deny_paths"):
        load_config(None, env={"INFEROS_PROXY_DENY_PATHS": "internal/*"})
