"""The proxy's own errors come in OpenAI's shape; bad input never breaks the proxy."""

from __future__ import annotations

import base64

import aiohttp

from tests.backends import free_port
from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream


def _openai_error(body: dict, kind: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert error["type"] == kind and error["code"] == kind
    assert isinstance(error["message"], str) and error["message"]


async def test_upstream_down_gives_502_in_openai_shape(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/api/v1/chat/completions",
                               json={"model": "m", "messages": []}) as resp:
            assert resp.status == 502
            _openai_error(await resp.json(), "upstream_unavailable")
            assert resp.headers["X-Request-Id"]


async def test_silent_upstream_gives_504_after_the_idle_timeout(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url, idle_timeout_s=0.3)
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/silent", json={}) as resp:
            assert resp.status == 504
            _openai_error(await resp.json(), "upstream_timeout")


async def test_body_over_the_limit_gives_413_declared_or_streamed(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url, max_body_bytes=1024)
    before = equipment.requests
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/echo/x", data=b"x" * 2048) as resp:
            assert resp.status == 413
            _openai_error(await resp.json(), "request_too_large")

        async def chunked():
            for _ in range(8):
                yield b"y" * 512

        async with client.post(proxy.proxy_url + "/sink", data=chunked()) as resp:
            assert resp.status == 413
            _openai_error(await resp.json(), "request_too_large")
        assert equipment.requests == before  # the declared one never reached upstream
        async with client.post(proxy.proxy_url + "/echo/x", data=b"x" * 1024) as resp:
            assert resp.status == 200  # exactly at the limit is fine


async def test_malformed_json_is_forwarded_untouched(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    for body in (b'{"model": "m", "messages": [', b"\xff\xfe not json", b"[1, 2]", b""):
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.proxy_url + "/echo/api/v1/chat/completions",
                                   data=body,
                                   headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200
                assert base64.b64decode((await resp.json())["body_b64"]) == body
    assert proxy.observer.errors == 0


async def test_admin_listener_unknown_path_and_method_are_openai_shaped(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/v1/no-such-thing") as resp:
            assert resp.status == 404
            _openai_error(await resp.json(), "not_found")
        async with client.delete(proxy.admin_url + "/metrics") as resp:
            assert resp.status == 405
            _openai_error(await resp.json(), "method_not_allowed")
            assert "GET" in resp.headers["Allow"]
        async with client.get(proxy.admin_url + "/v1/health") as resp:
            assert resp.status == 200  # a route that exists is untouched
