"""The proxy answers only Host names of this machine (DNS rebinding defence), in every
mode, and the allow-list widens that (proxy/host_guard.py). Issue 11, item 1: the proxy
accepted any Host, so a rebinding page could use the model."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from inferos.proxy.host_guard import HostAllowList, host_name, is_loopback
from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream


async def _get(url: str, host: str | None) -> tuple[int, Any]:
    headers = {"Host": host} if host is not None else {}
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize("host", ["evil.example:8020", "evil.example", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "", "[::1"])
async def test_a_foreign_host_is_refused_before_the_backend(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory, host: str,
        passthrough: bool) -> None:
    proxy = await make_proxy(equipment.url, passthrough=passthrough)
    status, body = await _get(proxy.proxy_url + "/echo/api/v1/models", host)
    assert status == 403
    assert body["error"]["code"] == "forbidden_host"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert equipment.requests == 0


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST",
                                  "[::1]:{port}", "127.9.9.9", "[::ffff:127.0.0.1]:{port}"])
async def test_this_machines_names_are_answered(equipment: EquipmentUpstream,
                                                make_proxy: ProxyFactory, host: str) -> None:
    proxy = await make_proxy(equipment.url)
    status, _ = await _get(proxy.proxy_url + "/echo/x", host.format(port=proxy.listen.port))
    assert status == 200


async def test_the_allow_list_admits_its_names(equipment: EquipmentUpstream,
                                               make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url, allowed_hosts=("inferos.lan",))
    assert (await _get(proxy.proxy_url + "/echo/x", "inferos.lan:8020"))[0] == 200
    assert (await _get(proxy.proxy_url + "/echo/x", "INFEROS.LAN"))[0] == 200
    assert (await _get(proxy.proxy_url + "/echo/x", "other.lan"))[0] == 403
    anything = await make_proxy(equipment.url, allowed_hosts=("*",))
    assert (await _get(anything.proxy_url + "/echo/x", "whatever.example"))[0] == 200


def test_the_listen_address_is_a_name_unless_it_is_a_wildcard() -> None:
    lan = HostAllowList.for_listener("192.168.1.5")
    assert lan.allows("192.168.1.5:8020") and not lan.allows("192.168.1.6:8020")
    for wildcard in ("0.0.0.0", "::", ""):
        everywhere = HostAllowList.for_listener(wildcard)
        assert not everywhere.allows("0.0.0.0:8020") and not everywhere.allows("[::]:8020")
        assert everywhere.allows("127.0.0.1:8020")
    assert HostAllowList.for_listener("[fe80::1]").allows("[fe80::1]:8020")


def test_no_host_header_is_not_a_browser() -> None:
    assert HostAllowList.for_listener("127.0.0.1").allows(None)


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8020", "127.0.0.1"), ("[::1]:8021", "::1"), ("LocalHost", "localhost"),
    ("[::1", ""), ("::1", "::1"), (" example.com:80 ", "example.com")])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(("name", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.255.0.1", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("10.0.0.1", False),
    ("localhost.example", False), ("::ffff:10.0.0.1", False)])
def test_is_loopback(name: str, loopback: bool) -> None:
    assert is_loopback(name) is loopback


def test_many_distinct_hosts_cost_no_unbounded_memory() -> None:
    hosts = HostAllowList.for_listener("127.0.0.1")
    for i in range(5000):
        assert not hosts.allows(f"h{i}.example")
    assert len(hosts._seen) <= 1024
