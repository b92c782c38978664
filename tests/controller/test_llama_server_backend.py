"""llama.cpp's own server as the managed llamacpp backend, for real: started on the real
SmolLM2 GGUF, its settings read back from its command line, answering chat completions on
several slots at once and streams back to back on one connection, and saying in describe()
and health which server runs."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import pytest

from inferos.controller.backend_child import llama_server_launcher
from inferos.controller.llama_server import find_llama_server
from inferos.controller.managed_backend import LLAMACPP, ManagedBackend
from inferos.controller.snapshot import BackendSettings
from tests.backends import smollm2_gguf

pytestmark = pytest.mark.llamacpp
BINARY = find_llama_server()


@pytest.mark.skipif(BINARY is None, reason="llama-server is not built: run "
                    "scripts/build-llama-server.sh (scripts/test builds it)")
async def test_llama_server_backend_answers_and_reads_back() -> None:
    assert BINARY is not None
    settings = BackendSettings(ctx_size=2048, cache_type="q8_0", threads=2)
    backend = ManagedBackend(LLAMACPP, llama_server_launcher(BINARY, str(smollm2_gguf()),
                                                             "smollm2", slots=2), settings)
    try:
        url = await backend.start()
        described = await backend.describe()
        assert described["server"] == BINARY.describe()
        assert described["argv"][described["argv"].index("-np") + 1] == "2"
        state = await backend.read_back()
        assert state.model == "smollm2"
        assert state.capabilities.kind == LLAMACPP
        assert state.capabilities.version == BINARY.describe()  # health's backend.version
        assert dict(state.settings) == {"ctx_size": 2048, "cache_type": "q8_0",
                                        "flash_attn": True, "threads": 2}
        body = {"model": "smollm2", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}]}
        async with httpx.AsyncClient(timeout=120) as client:
            # two at once: one per slot
            replies = await asyncio.gather(*(client.post(url + "/v1/chat/completions",
                                                         json=body) for _ in range(2)))
            props = (await client.get(url + "/props")).json()
        for reply in replies:
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["choices"][0]["message"]["content"]
            assert 0 < answer["usage"]["completion_tokens"] <= 8
        # the server's own view agrees with what was read from its command line
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == 2048
        # Streams back to back on one keep-alive connection, as the proxy's pool sends
        # them: unpatched, llama-server closed the connection after each stream and every
        # second request failed (scripts/build-llama-server.sh, keepalive-after-stream).
        async with aiohttp.ClientSession() as session:
            for _ in range(6):
                async with session.post(url + "/v1/chat/completions",
                                        json={**body, "stream": True}) as stream:
                    assert stream.status == 200
                    assert "[DONE]" in await stream.text()
    finally:
        await backend.close()
