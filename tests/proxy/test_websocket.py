"""WebSocket upgrades (Lemonade's /realtime, /logs/stream) are relayed both ways."""

from __future__ import annotations

import aiohttp

from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream


async def test_text_and_binary_frames_cross_both_ways(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(proxy.proxy_url + "/ws", protocols=("echo.v1",)) as ws:
            assert ws.protocol == "echo.v1"
            await ws.send_str("hello")
            assert await ws.receive_str() == "echo:hello"
            await ws.send_bytes(b"\x00\x01")
            assert await ws.receive_bytes() == b"echo:\x00\x01"
            await ws.close()
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/v1/health") as resp:
            assert (await resp.json())["status"] == "ok"


async def test_refused_upgrade_reports_the_upstream_status(
    equipment: EquipmentUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(equipment.url)
    async with aiohttp.ClientSession() as client:
        try:
            await client.ws_connect(proxy.proxy_url + "/no-such-socket")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 404
        else:
            raise AssertionError("the upgrade should have been refused")
