"""A client of the proxy stays on the proxy: a backend on this machine gets the client's
Host (so the redirects it builds name the proxy), and a ``Location`` into the backend's
own address is pointed back at the proxy (proxy/headers.py). Issue 11, item 7: Lemonade's
``/api/v1/models/`` redirect named its own port, and a client following it left the proxy.

``RedirectingUpstream`` is test equipment, not a backend: it redirects the ways servers do
(from the Host it was sent, or from its own address whatever the Host) and echoes the Host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from inferos.proxy.forward import is_local
from inferos.proxy.headers import point_at_proxy, request_headers, response_headers
from tests.local_server import serve_on_free_port
from tests.proxy.conftest import ProxyFactory


class RedirectingUpstream:
    """Test equipment: redirects by the Host it got, by its own address, elsewhere."""

    def __init__(self) -> None:
        self.url = ""
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.endswith("/models/"):  # what Lemonade does: trailing slash -> redirect
            return web.Response(status=307, headers={
                "Location": f"http://{request.host}{path.rstrip('/')}"})
        if path.endswith("/own"):
            return web.Response(status=302, headers={
                "Location": f"{self.url}{path[:-len('/own')]}/target?a=1#f"})
        if path.endswith("/localhost"):
            port = self.url.rsplit(":", 1)[1]
            return web.Response(status=302, headers={"Location": f"http://localhost:{port}/t",
                                                     "Content-Location": f"{self.url}/c"})
        if path.endswith("/elsewhere"):
            return web.Response(status=302, headers={"Location": "https://example.com/t"})
        if path.endswith("/relative"):
            return web.Response(status=302, headers={"Location": "/t"})
        return web.json_response({"host": request.headers.get("Host"),
                                  "authorization": request.headers.getall("Authorization",
                                                                          [])})

    async def start(self) -> None:
        self._runner, self.url = await serve_on_free_port(self.app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def redirecting() -> AsyncIterator[RedirectingUpstream]:
    upstream = RedirectingUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


async def _get(url: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=headers or {}, allow_redirects=False) as resp:
            await resp.read()
            return resp


@pytest.mark.parametrize("passthrough", [False, True])
async def test_the_client_host_reaches_a_local_backend(redirecting: RedirectingUpstream,
                                                       make_proxy: ProxyFactory,
                                                       passthrough: bool) -> None:
    proxy = await make_proxy(redirecting.url, passthrough=passthrough)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/echo") as resp:
            assert (await resp.json())["host"] == str(proxy.listen)
    resp = await _get(proxy.proxy_url + "/api/v1/models/")
    assert resp.status == 307
    assert resp.headers["Location"] == proxy.proxy_url + "/api/v1/models"


@pytest.mark.parametrize("passthrough", [False, True])
async def test_a_location_at_the_backend_is_pointed_at_the_proxy(
        redirecting: RedirectingUpstream, make_proxy: ProxyFactory, passthrough: bool) -> None:
    proxy = await make_proxy(redirecting.url, passthrough=passthrough)
    resp = await _get(proxy.proxy_url + "/api/v1/own")
    assert resp.headers["Location"] == proxy.proxy_url + "/api/v1/target?a=1#f"
    # as the client addressed the proxy
    port = proxy.listen.port
    resp = await _get(proxy.proxy_url + "/api/v1/own", {"Host": f"localhost:{port}"})
    assert resp.headers["Location"] == f"http://localhost:{port}/api/v1/target?a=1#f"
    # a loopback alias of the backend's address is the backend too
    resp = await _get(proxy.proxy_url + "/localhost")
    assert resp.headers["Location"] == proxy.proxy_url + "/t"
    assert resp.headers["Content-Location"] == proxy.proxy_url + "/c"
    # elsewhere, and relative, stay as they are
    assert (await _get(proxy.proxy_url + "/elsewhere")).headers["Location"] == \
        "https://example.com/t"
    assert (await _get(proxy.proxy_url + "/relative")).headers["Location"] == "/t"


async def test_a_backend_with_a_path_prefix_maps_back(redirecting: RedirectingUpstream,
                                                      make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(redirecting.url + "/prefix")
    resp = await _get(proxy.proxy_url + "/api/v1/own")  # upstream sees /prefix/api/v1/own
    assert resp.headers["Location"] == proxy.proxy_url + "/api/v1/target?a=1#f"


async def test_a_managed_backends_key_replaces_the_clients(redirecting: RedirectingUpstream,
                                                          make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(redirecting.url, upstream_api_key="child-key")
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.proxy_url + "/echo",
                              headers={"Authorization": "Bearer lemonade"}) as resp:
            assert (await resp.json())["authorization"] == ["Bearer child-key"]
    plain = await make_proxy(redirecting.url)
    async with aiohttp.ClientSession() as client:
        async with client.get(plain.proxy_url + "/echo",
                              headers={"Authorization": "Bearer lemonade"}) as resp:
            assert (await resp.json())["authorization"] == ["Bearer lemonade"]


def test_only_a_backend_on_this_machine_gets_the_clients_host() -> None:
    assert is_local("http://127.0.0.1:13305") and is_local("http://localhost:8000/api")
    assert is_local("http://[::1]:13305")
    assert not is_local("http://192.168.1.5:13305") and not is_local("https://api.example")
    incoming = CIMultiDict({"Host": "127.0.0.1:8020", "Accept": "*/*"})
    kept, _ = request_headers(incoming, add_request_id=False, forward_host=True)  # type: ignore[arg-type]
    dropped, _ = request_headers(incoming, add_request_id=False)  # type: ignore[arg-type]
    assert kept["Host"] == "127.0.0.1:8020" and "Host" not in dropped


@pytest.mark.parametrize(("location", "upstream", "expected"), [
    ("http://127.0.0.1:13305/api/v1/models", "http://127.0.0.1:13305",
     "http://127.0.0.1:8020/api/v1/models"),
    ("http://127.0.0.1:13305/api/v1/models", "http://localhost:13305",
     "http://127.0.0.1:8020/api/v1/models"),
    ("http://127.0.0.1:13306/x", "http://127.0.0.1:13305", "http://127.0.0.1:13306/x"),
    ("https://127.0.0.1:13305/x", "http://127.0.0.1:13305", "https://127.0.0.1:13305/x"),
    ("http://box:80/p/x", "http://box/p", "http://127.0.0.1:8020/x"),
    ("http://box/other", "http://box/p", "http://box/other"),
    ("http://[::1:bad/x", "http://127.0.0.1:13305", "http://[::1:bad/x"),
])
def test_point_at_proxy(location: str, upstream: str, expected: str) -> None:
    assert point_at_proxy(location, upstream, "http://127.0.0.1:8020") == expected


def test_response_headers_leave_location_alone_without_origins() -> None:
    headers = CIMultiDict({"Location": "http://127.0.0.1:13305/x"})
    assert response_headers(headers)["Location"] == "http://127.0.0.1:13305/x"  # type: ignore[arg-type]
