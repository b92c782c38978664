"""Every outcome label of ``inferos_requests_total`` is reached by the situation it names,
and only by it: a client that hangs up before the backend answers is a client disconnect,
never a success. The upstream is test equipment (it can go silent, crash mid-stream);
what is measured is the proxy's own accounting."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from prometheus_client import generate_latest

from inferos.proxy import observation
from inferos.proxy.server import ProxyServer
from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream

ALL_OUTCOMES = (observation.OK, observation.CLIENT_DISCONNECT, observation.UPSTREAM_DISCONNECT,
                observation.UPSTREAM_TIMEOUT, observation.UPSTREAM_UNAVAILABLE,
                observation.BODY_TOO_LARGE)


def _by_outcome(proxy: ProxyServer) -> dict[str, float]:
    counts = dict.fromkeys(ALL_OUTCOMES, 0.0)
    for family in proxy.registry.collect():
        if family.name != "inferos_requests":
            continue
        for sample in family.samples:
            if sample.name == "inferos_requests_total":
                counts[sample.labels["outcome"]] += sample.value
    return counts


async def _recorded(proxy: ProxyServer, before: int) -> None:
    """Until the proxy has recorded one more request (its handler ends after the client
    has gone, when the cancellation reaches it)."""
    for _ in range(500):
        if proxy.observer.records > before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the proxy recorded nothing")


async def _only(proxy: ProxyServer, outcome: str, act: Callable[[], Awaitable[None]]) -> None:
    before = proxy.observer.records
    await act()
    await _recorded(proxy, before)
    counts = _by_outcome(proxy)
    assert counts[outcome] == 1, counts
    assert sum(counts.values()) == 1, counts


async def test_a_delivered_response_is_ok(equipment: EquipmentUpstream,
                                          make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)

    async def act() -> None:
        async with aiohttp.ClientSession() as client, \
                client.post(proxy.proxy_url + "/echo/v1/chat/completions", json={}) as resp:
            assert resp.status == 200
            await resp.read()

    await _only(proxy, observation.OK, act)


async def test_a_client_gone_before_the_backend_answers_is_a_disconnect(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory) -> None:
    # `curl -m 2` on a long non-streaming chat: the backend has not sent its headers yet.
    proxy = await make_proxy(equipment.url)

    async def act() -> None:
        async with aiohttp.ClientSession() as client:
            with pytest.raises(asyncio.TimeoutError):
                async with client.post(proxy.proxy_url + "/silent",
                                       json={"messages": [{"role": "user", "content": "hi"}]},
                                       timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass

    await _only(proxy, observation.CLIENT_DISCONNECT, act)
    record_status = [s for f in proxy.registry.collect() if f.name == "inferos_requests"
                     for s in f.samples if s.name == "inferos_requests_total"]
    assert record_status[0].labels["status"] == observation.CLIENT_DISCONNECT


async def test_a_client_gone_mid_stream_is_a_disconnect(equipment: EquipmentUpstream,
                                                        make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)

    async def act() -> None:
        async with aiohttp.ClientSession() as client, \
                client.post(proxy.proxy_url + "/sse/forever", json={}) as resp:
            await resp.content.readline()

    await _only(proxy, observation.CLIENT_DISCONNECT, act)
    await asyncio.wait_for(equipment.disconnected.wait(), 10)


async def test_a_backend_dying_mid_stream_is_an_upstream_disconnect(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url)

    async def act() -> None:
        async with aiohttp.ClientSession() as client, \
                client.post(proxy.proxy_url + "/sse/crash", json={}) as resp:
            await resp.read()

    await _only(proxy, observation.UPSTREAM_DISCONNECT, act)


async def test_a_silent_backend_is_an_upstream_timeout(equipment: EquipmentUpstream,
                                                       make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url, idle_timeout_s=0.2)

    async def act() -> None:
        async with aiohttp.ClientSession() as client, \
                client.get(proxy.proxy_url + "/silent") as resp:
            assert resp.status == 504

    await _only(proxy, observation.UPSTREAM_TIMEOUT, act)


async def test_an_absent_backend_is_upstream_unavailable(make_proxy: ProxyFactory) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = await make_proxy(f"http://127.0.0.1:{port}")

    async def act() -> None:
        async with aiohttp.ClientSession() as client, \
                client.get(proxy.proxy_url + "/v1/models") as resp:
            assert resp.status == 502

    await _only(proxy, observation.UPSTREAM_UNAVAILABLE, act)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_body_too_large(equipment: EquipmentUpstream,
                                                       make_proxy: ProxyFactory,
                                                       chunked: bool) -> None:
    proxy = await make_proxy(equipment.url, max_body_bytes=100_000)

    async def body() -> object:
        for _ in range(4):
            yield b"x" * 65_536

    async def act() -> None:
        data = body() if chunked else b"x" * 200_000
        async with aiohttp.ClientSession() as client, \
                client.post(proxy.proxy_url + "/sink", data=data) as resp:
            assert resp.status == 413

    await _only(proxy, observation.BODY_TOO_LARGE, act)


async def test_a_model_name_that_is_not_text_does_not_break_the_scrape(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory) -> None:
    # json reads "\ud800" into a str that no encoder takes; as a model label it would make
    # every later /metrics scrape fail.
    proxy = await make_proxy(equipment.url)
    body = b'{"model":"\\ud800","messages":[{"role":"user","content":"hi"}]}'

    async def act() -> None:
        async with aiohttp.ClientSession() as client, client.post(
                proxy.proxy_url + "/echo/v1/chat/completions", data=body,
                headers={"Content-Type": "application/json"}) as resp:
            await resp.read()

    await _only(proxy, observation.OK, act)
    assert b"inferos_requests_total" in generate_latest(proxy.registry)
