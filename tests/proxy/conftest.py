from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import HostPort, ProxySettings
from tests.proxy.equipment import EquipmentUpstream

ProxyFactory = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def equipment() -> AsyncIterator[EquipmentUpstream]:
    upstream = EquipmentUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    """Starts proxies on free ports: ``await make_proxy(upstream_url, passthrough=True, ...)``."""
    async with AsyncExitStack() as stack:

        async def factory(upstream: str, **settings: Any) -> ProxyServer:
            proxy = ProxyServer(ProxySettings(
                upstream=upstream, listen=HostPort("127.0.0.1", 0),
                admin=HostPort("127.0.0.1", 0), **settings))
            return await stack.enter_async_context(proxy)

        yield factory
