"""SSE is relayed byte for byte and chunk by chunk, and disconnects travel upstream."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import FIXED_SSE, FIXED_SSE_PIECES, EquipmentUpstream


async def test_fixed_bytes_with_awkward_boundaries_arrive_exactly(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/sse/fixed") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            received = await resp.read()
    assert received == FIXED_SSE


async def test_each_chunk_is_forwarded_as_it_arrives(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    """The upstream holds the rest of the stream until the client has seen the first piece:
    a proxy that buffered would deadlock here (and the test would time out)."""
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/sse/hold") as resp:
            first = await resp.content.readexactly(len(FIXED_SSE_PIECES[0]))
            assert first == FIXED_SSE_PIECES[0]
            equipment.release.set()
            rest = await resp.read()
    assert first + rest == FIXED_SSE


async def test_client_disconnect_closes_the_upstream_request(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/sse/forever", json={"stream": True}) as resp:
            await resp.content.readline()
            resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(equipment.disconnected.wait(), timeout=10)
    sent = equipment.chunks_sent_before_disconnect
    await asyncio.sleep(0.2)
    assert equipment.chunks_sent_before_disconnect == sent  # nothing more is generated
    assert proxy.runtime.in_flight == 0


async def test_upstream_crash_mid_stream_gives_bytes_so_far_and_an_error_event(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.proxy_url + "/sse/crash") as resp:
            assert resp.status == 200
            received = await resp.read()  # a clean chunked end: no exception here
        so_far = FIXED_SSE_PIECES[0] + FIXED_SSE_PIECES[1]
        assert received.startswith(so_far), received
        # then one OpenAI-shaped error event, so the client knows the answer is cut
        events = [e for e in received[len(so_far):].split(b"\n\n") if e.strip()]
        assert len(events) == 1 and events[0].startswith(b"data: "), events
        error = json.loads(events[0][len(b"data: "):])["error"]
        assert error["code"] == "upstream_disconnect" and error["message"], error
        assert b"[DONE]" not in received
        # the proxy stays healthy and keeps serving
        async with client.get(proxy.proxy_url + "/sse/fixed") as resp:
            assert await resp.read() == FIXED_SSE
        async with client.get(proxy.admin_url + "/v1/health") as resp:
            assert (await resp.json())["status"] == "ok"


async def test_upstream_crash_of_a_chunked_non_sse_body_cuts_the_client_connection(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    # chunked JSON has no way to carry an error after its start: ending it in order would
    # hand the client a short body that looks complete
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/chunked/crash") as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_upstream_crash_with_declared_length_cuts_the_client_connection(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/length/crash") as resp:
            try:
                await resp.read()
            except aiohttp.ClientPayloadError:
                cut = True
            else:
                cut = False
    assert cut, "a short body with a declared Content-Length must not look complete"
