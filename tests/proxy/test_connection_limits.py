"""Slow and idle clients, and the connection cap, on the proxy's and the admin's listeners.

Raw sockets play the hostile clients (slowloris: a request head that never ends; idle
keep-alive sockets; more connections than the cap). Bounds are short here; every wait is a
poll with a generous deadline, never a timing assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp

from inferos.proxy.connection_limits import ConnectionSettings
from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import HostPort
from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import FIXED_SSE, EquipmentUpstream

DEADLINE_S = 15.0
PARTIAL_HEAD = b"GET /echo/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(where: HostPort) -> Stream:
    return await asyncio.open_connection(where.host, where.port)


async def _closed_by_server(reader: asyncio.StreamReader, *,
                            trickle: asyncio.StreamWriter | None = None) -> bytes:
    """Reads until the server closes (EOF or reset); returns what it sent. With ``trickle``,
    keeps sending one more header byte every 50 ms meanwhile, as slowloris does."""
    received = b""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if trickle is not None:
            with contextlib.suppress(ConnectionError):
                trickle.write(b"X")
                await trickle.drain()
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.05)
        except TimeoutError:
            continue
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received[:200]!r}")


async def _get_ok(url: str) -> None:
    async with aiohttp.ClientSession() as client, client.get(url) as resp:
        assert resp.status == 200, await resp.text()


def _sample(proxy: ProxyServer, name: str, listener: str = "proxy") -> float:
    return proxy.registry.get_sample_value(name, {"listener": listener}) or 0.0


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _limits(**changes: float | int | None) -> ConnectionSettings:
    base = {"header_timeout_s": 0.5, "keepalive_timeout_s": 30.0, "max_connections": 64}
    base.update(changes)
    return ConnectionSettings(**base)  # type: ignore[arg-type]


async def test_slowloris_heads_are_closed_while_normal_requests_work(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    proxy = await make_proxy(equipment.url, connections=_limits())
    slow = [await _connect(proxy.listen) for _ in range(5)]
    for _, writer in slow:
        writer.write(PARTIAL_HEAD)
        await writer.drain()
    # Meanwhile a well-behaved client is served.
    await _get_ok(f"{proxy.proxy_url}/echo/normal")
    answers = await asyncio.gather(*(_closed_by_server(r, trickle=w) for r, w in slow))
    for answer in answers:
        # A 408 when the client is still there to read it, in OpenAI's shape.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        if answer:
            assert b'"code": "request_timeout"' in answer or b'"code":"request_timeout"' \
                in answer
    assert any(answers), "at least one slow client read its 408"
    for _, writer in slow:
        writer.close()
    await _until(lambda: _sample(proxy, "inferos_connections_header_timeouts_total") >= 5,
                 "header timeouts counted")
    await _get_ok(f"{proxy.proxy_url}/echo/after")


async def test_a_connection_that_sends_nothing_is_closed_by_the_header_timeout(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    proxy = await make_proxy(equipment.url, connections=_limits())
    reader, writer = await _connect(proxy.listen)
    await _closed_by_server(reader)
    writer.close()


async def test_idle_keepalive_connections_are_closed_after_the_bound(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    # The header timeout is long here: what closes the socket is the keep-alive bound.
    proxy = await make_proxy(equipment.url, connections=_limits(header_timeout_s=60.0,
                                                                keepalive_timeout_s=0.5))
    idle = [await _connect(proxy.listen) for _ in range(20)]
    for reader, writer in idle:
        writer.write(b"GET /echo/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Connection: close" not in head  # kept alive, then idle
    await asyncio.gather(*(_closed_by_server(reader) for reader, _ in idle))
    for _, writer in idle:
        writer.close()
    await _until(lambda: _sample(proxy, "inferos_connections_open") == 0,
                 "the open-connections gauge falls back to 0")


async def test_a_stream_outlives_both_timeouts(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    proxy = await make_proxy(equipment.url, connections=_limits(header_timeout_s=0.2,
                                                                keepalive_timeout_s=0.2))
    async with aiohttp.ClientSession() as client, \
            client.get(f"{proxy.proxy_url}/sse/hold") as resp:
        assert resp.status == 200
        await asyncio.wait_for(equipment.first_piece_sent.wait(), DEADLINE_S)
        await asyncio.sleep(1.0)  # five times either bound, mid-stream
        equipment.release.set()
        body = await resp.read()
    assert body == FIXED_SSE


async def test_connections_past_the_cap_are_refused_and_counted(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    cap = 4
    proxy = await make_proxy(equipment.url, connections=_limits(header_timeout_s=60.0,
                                                                max_connections=cap))
    held = [await _connect(proxy.listen) for _ in range(cap)]
    await _until(lambda: _sample(proxy, "inferos_connections_open") == cap,
                 "the cap's connections are open")
    extra = [await _connect(proxy.listen) for _ in range(3)]
    answers = await asyncio.gather(*(_closed_by_server(r) for r, _ in extra))
    for answer in answers:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
    assert any(answers), "at least one refused client read its 503"
    assert _sample(proxy, "inferos_connections_refused_total") >= 3
    assert _sample(proxy, "inferos_connections_open") == cap
    # The admin listener has its own count: health still answers.
    await _get_ok(f"{proxy.admin_url}/v1/health")
    for _, writer in (*held, *extra):
        writer.close()
    await _until(lambda: _sample(proxy, "inferos_connections_open") == 0,
                 "the held connections are released")
    await _get_ok(f"{proxy.proxy_url}/echo/after")


async def test_the_admin_listener_times_out_slow_heads_too(
        make_proxy: ProxyFactory, equipment: EquipmentUpstream) -> None:
    proxy = await make_proxy(equipment.url, connections=_limits())
    reader, writer = await _connect(proxy.admin)
    writer.write(b"GET /v1/health HTTP/1.1\r\n")
    await writer.drain()
    await _closed_by_server(reader, trickle=writer)
    writer.close()
    await _until(lambda: _sample(proxy, "inferos_connections_header_timeouts_total",
                                 "admin") >= 1, "counted on the admin listener")


def test_defaults_are_documented_bounds() -> None:
    settings = ConnectionSettings()
    assert settings.header_timeout_s == 10.0
    assert settings.keepalive_timeout_s == 75.0
    assert settings.max_connections == 1024
