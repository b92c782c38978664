"""Forwarding is transparent: what the client sends is what the upstream gets, and back."""

from __future__ import annotations

import base64
import gzip

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream


async def _echo(
    proxy_url: str, method: str, path: str, **kwargs: object
) -> tuple[int, CIMultiDict[str], dict]:
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept")) as client:
        url = URL(proxy_url + path, encoded=True)  # send the path exactly as written
        async with client.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, CIMultiDict(resp.headers), await resp.json()


async def test_method_path_query_headers_and_body_reach_upstream_unchanged(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi \xc3\xa9"}]}'
    status, headers, echo = await _echo(
        proxy.proxy_url, "POST", "/echo/api/v1/chat/completions?a=1&b=%2F%20x&a=2",
        data=body,
        headers={"Authorization": "Bearer lemonade", "X-Custom": "one",
                 "Content-Type": "application/json", "Connection": "keep-alive, X-Drop",
                 "X-Drop": "hop", "Keep-Alive": "timeout=5"},
    )
    assert status == 200
    assert echo["method"] == "POST"
    assert echo["raw_path"] == "/echo/api/v1/chat/completions?a=1&b=%2F%20x&a=2"
    assert base64.b64decode(echo["body_b64"]) == body
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["authorization"] == "Bearer lemonade"
    assert sent["x-custom"] == "one"
    assert sent["content-type"] == "application/json"
    # hop-by-hop headers, and headers named by Connection, stop at the proxy
    assert "x-drop" not in sent and "keep-alive" not in sent
    # no header the client did not send is invented, besides the request id
    assert "user-agent" not in sent and "accept" not in sent
    assert sent["x-request-id"] == headers["X-Request-Id"]
    assert headers["X-Upstream"] == "equipment" and headers["Set-Cookie"] == "a=1"


async def test_existing_request_id_is_kept(equipment: EquipmentUpstream,
                                           make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)
    _, headers, echo = await _echo(proxy.proxy_url, "GET", "/echo/x",
                                   headers={"X-Request-Id": "client-chosen"})
    assert headers["X-Request-Id"] == "client-chosen"
    assert CIMultiDict(echo["headers"])["X-Request-Id"] == "client-chosen"


async def test_head_options_delete_and_put_are_forwarded(equipment: EquipmentUpstream,
                                                         make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)
    for method in ("OPTIONS", "DELETE", "PUT", "PATCH"):
        status, _, echo = await _echo(proxy.proxy_url, method, "/echo/api/v1/models")
        assert status == 200 and echo["method"] == method
    async with aiohttp.ClientSession() as client:
        async with client.head(proxy.proxy_url + "/echo/api/v1/health") as direct_head:
            assert direct_head.status == 200
            assert direct_head.headers["X-Upstream"] == "equipment"
            assert await direct_head.read() == b""


async def test_status_headers_and_error_body_come_back_unchanged(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    for code in (404, 409, 500, 503):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.proxy_url}/status/{code}") as resp:
                assert resp.status == code
                assert resp.headers["X-Custom"] == "kept"
                assert await resp.read() == b'{"error":"text shape"}'


async def test_streamed_chunked_upload_is_not_buffered_or_changed(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    piece = bytes(range(256)) * 256  # 64 KiB

    async def body():
        for _ in range(64):  # 4 MiB, chunked (no Content-Length)
            yield piece

    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/sink", data=body()) as resp:
            assert resp.status == 200
            assert (await resp.json())["received"] == 64 * len(piece)


async def test_compressed_bytes_pass_through_with_their_encoding(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(proxy.proxy_url + "/gzip",
                              headers={"Accept-Encoding": "gzip"}) as resp:
            raw = await resp.read()
            assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b'{"hello": "world"}' * 50


async def test_passthrough_adds_nothing_and_observes_nothing(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url, passthrough=True)
    _, headers, echo = await _echo(proxy.proxy_url, "POST", "/echo/api/v1/chat/completions",
                                   data=b'{"model":"m"}')
    assert "X-Request-Id" not in headers
    assert all(k.lower() != "x-request-id" for k, _ in echo["headers"])
    assert proxy.observer.records == 0
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/v1/health") as resp:
            health = await resp.json()
    assert health["status"] == "passthrough" and health["passthrough"] is True
