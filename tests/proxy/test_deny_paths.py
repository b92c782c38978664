"""``proxy.deny_paths``: Lemonade's admin routes (``/internal/*``) never reach the backend
through the proxy, under any prefix or spelling; other paths pass (proxy/deny_paths.py).
Issue 11, item 2: ``/internal/shutdown`` and ``/internal/set`` were forwarded as sent."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from yarl import URL

from inferos.proxy.deny_paths import PathDenyList, canonical_path
from tests.proxy.conftest import ProxyFactory
from tests.proxy.equipment import EquipmentUpstream

DENIED = ["/internal/shutdown", "/internal/set", "/internal", "/api/v1/internal/set",
          "/api/v0/internal/shutdown", "/v1/internal/set", "/v0/internal/set",
          "/INTERNAL/Shutdown", "/api/v1//internal/set", "/api/v1/./internal/set",
          "/api/v1/%69nternal/set", "/api/v1/models/../internal/set",
          "/internal%2Fshutdown", "/api/v1/%2569nternal/set", "/internal/set?x=1"]
FORWARDED = ["/api/v1/models", "/api/v1/internalize", "/v1/chat/completions",
             "/api/v1/models/internal/x", "/health"]


async def _post(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.post(URL(url, encoded=True), json={}) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize("path", DENIED)
async def test_lemonades_admin_routes_are_refused(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory, path: str,
        passthrough: bool) -> None:
    # The upstream's /echo prefix makes every forwarded path count at the equipment.
    proxy = await make_proxy(equipment.url + "/echo", passthrough=passthrough)
    status, body = await _post(proxy.proxy_url + path)
    assert status == 403
    assert body["error"]["code"] == "path_denied"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert equipment.requests == 0


@pytest.mark.parametrize("path", FORWARDED)
async def test_other_paths_are_forwarded(equipment: EquipmentUpstream,
                                         make_proxy: ProxyFactory, path: str) -> None:
    proxy = await make_proxy(equipment.url + "/echo")
    status, body = await _post(proxy.proxy_url + path)
    assert status == 200 and body["raw_path"] == "/echo" + path


async def test_an_absolute_form_target_is_checked_by_its_path(
        equipment: EquipmentUpstream, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url + "/echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen.port)
    writer.write(f"POST http://127.0.0.1:{proxy.listen.port}/api/v1/internal/shutdown "
                 f"HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                 f"Connection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403") and b"path_denied" in answer
    assert equipment.requests == 0


async def test_the_list_is_the_users(equipment: EquipmentUpstream,
                                     make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(equipment.url + "/echo", deny_paths=("/pull", "/api/*/delete"))
    assert (await _post(proxy.proxy_url + "/api/v1/pull"))[0] == 403
    assert (await _post(proxy.proxy_url + "/api/v0/delete"))[0] == 403
    assert (await _post(proxy.proxy_url + "/internal/set"))[0] == 200  # the default replaced
    none = await make_proxy(equipment.url + "/echo", deny_paths=())
    assert (await _post(none.proxy_url + "/internal/set"))[0] == 200


@pytest.mark.parametrize(("raw", "path"), [
    ("/a//b/./c/../d", "/a/b/d"), ("//internal", "/internal"), ("/%2e%2e/internal", "/internal"),
    ("/a\\b", "/a/b"), ("/A?q=/internal", "/a"), ("", "/")])
def test_canonical_path(raw: str, path: str) -> None:
    assert canonical_path(raw) == path


def test_star_spans_folders_and_a_folder_pattern_holds_the_folder() -> None:
    deny = PathDenyList.of(["/internal/*", "/x*y"])
    assert deny.denies("/internal") and deny.denies("/internal/a/b")
    assert not deny.denies("/internals")
    assert deny.denies("/x/1/2/y") and deny.denies("/v1/xy") and not deny.denies("/xy/z")
    assert not PathDenyList.of([]).denies("/internal/set")
