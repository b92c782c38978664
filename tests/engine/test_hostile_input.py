"""Hostile bytes get an OpenAI-shaped error with the right status and code, straight at the
real engine and through the proxy in front of it (which forwards them untouched, so the
engine's answer is what the client sees), and the engine keeps serving afterwards.

Requests are written as raw bytes on a socket: an HTTP client would refuse to send most of
them (a lone surrogate, an absolute-form target, CONNECT, a broken request line).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from inferos.proxy.server import ProxyServer
from inferos.proxy.settings import HostPort, ProxySettings
from tests.backends import RunningServer
from tests.engine.engine_process import MODEL

pytestmark = pytest.mark.model


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        error = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        return dict(error)


async def _exchange(url: str, raw: bytes) -> Answer:
    """Sends ``raw`` on a fresh connection (which asks to close) and reads one response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, v in (line.split(":", 1) for line in lines if ":" in line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 60)
        return Answer(int(status_line.split()[1]), headers, body)
    finally:
        writer.close()


def _post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _chat(**fields: str) -> bytes:
    """A chat body with ``fields`` spliced in as raw JSON text (NaN, escapes...)."""
    extra = "".join(f',"{k}":{v}' for k, v in fields.items())
    return (f'{{"model":"{MODEL}","max_tokens":2,'
            f'"messages":[{{"role":"user","content":"hi"}}]{extra}}}').encode()


CHAT = "/api/v1/chat/completions"
# (case, raw request, status, code, param)
CASES: list[tuple[str, bytes, int, str, str | None]] = [
    ("lone surrogate escape",
     _post(CHAT, b'{"max_tokens":2,"messages":[{"role":"user","content":"a\\ud800b"}]}'),
     400, "invalid_value", "messages[0].content"),
    ("lone surrogate bytes",  # json decodes bytes with surrogatepass
     _post(CHAT, b'{"max_tokens":2,"messages":[{"role":"user","content":"\xed\xa0\x80"}]}'),
     400, "invalid_value", "messages[0].content"),
    ("lone surrogate in a key", _post(CHAT, b'{"\\udc00":1,"messages":[]}'),
     400, "invalid_value", "(body)"),
    ("nesting 100,000 deep", _post(CHAT, b"[" * 100_000), 400, "invalid_json", None),
    ("nesting 3,000 deep inside a field",
     _post(CHAT, b'{"messages":' + b"[" * 3000 + b"]" * 3000 + b"}"), 400, "invalid_json", None),
    ("temperature NaN", _post(CHAT, _chat(temperature="NaN")), 400, "invalid_value",
     "temperature"),
    ("top_p Infinity", _post(CHAT, _chat(top_p="Infinity")), 400, "invalid_value", "top_p"),
    ("repeat_penalty -Infinity", _post(CHAT, _chat(repeat_penalty="-Infinity")), 400,
     "invalid_value", "repeat_penalty"),
    ("token id out of the vocabulary",
     _post("/api/v1/completions", f'{{"model":"{MODEL}","prompt":[1,2,99999999],'
                                  '"max_tokens":2}'.encode()),
     400, "invalid_token_id", "prompt"),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     405, "method_not_allowed", None),
]


@pytest.fixture
async def proxy(engine: RunningServer) -> AsyncIterator[ProxyServer]:
    settings = ProxySettings(upstream=engine.url, listen=HostPort("127.0.0.1", 0),
                             admin=HostPort("127.0.0.1", 0))
    async with ProxyServer(settings) as running:
        yield running


@pytest.mark.parametrize(("case", "raw", "status", "code", "param"), CASES,
                         ids=[c[0] for c in CASES])
async def test_hostile_input_gets_an_openai_error_from_the_engine_and_the_proxy(
        engine: RunningServer, proxy: ProxyServer, case: str, raw: bytes, status: int,
        code: str, param: str | None) -> None:
    for url in (engine.url, proxy.proxy_url):
        answer = await _exchange(url, raw)
        assert answer.status == status, (url, answer)
        error = answer.error()
        assert (error["code"], error["param"]) == (code, param), (url, error)


async def test_an_absolute_form_target_is_served_as_its_path(engine: RunningServer,
                                                             proxy: ProxyServer) -> None:
    # RFC 9112 3.2.2: a server must accept `GET http://host/path`; the proxy sends the
    # origin-form upstream.
    for url in (engine.url, proxy.proxy_url):
        answer = await _exchange(url, b"GET http://127.0.0.1/api/v1/models?show_all=true "
                                      b"HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert answer.status == 200, (url, answer)
        assert MODEL in [m["id"] for m in json.loads(answer.body)["data"]]


async def test_http_the_parser_refuses_gets_an_openai_error(engine: RunningServer) -> None:
    for raw in (b"GARBAGE\r\n\r\n",
                b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n"):
        answer = await _exchange(engine.url, raw)
        assert answer.status == 400
        assert answer.error()["code"] == "bad_http_request"


async def test_a_chunked_body_over_the_limit_is_a_413(engine: RunningServer) -> None:
    # The engine's limit is 64 MiB; a chunked body declares no length, so it is counted.
    host, port = engine.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    piece = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"

    async def send() -> None:
        writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for _ in range(65):
                writer.write(piece)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass  # the engine may stop reading once it has answered

    async def answer() -> bytes:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 413 "), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        return await asyncio.wait_for(reader.readexactly(length), 60)

    try:
        _, raw = await asyncio.gather(send(), answer())
    finally:
        writer.close()
    error = json.loads(raw)["error"]
    assert error["code"] == "request_too_large"
    assert set(error) == {"message", "type", "param", "code"}


async def test_the_engine_still_generates_after_hostile_input(engine: RunningServer) -> None:
    for _, raw, *_ in CASES:
        await _exchange(engine.url, raw)
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(engine.url + CHAT, json={
            "model": MODEL, "max_tokens": 3,
            "messages": [{"role": "user", "content": "Say hi."}]})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] >= 1
        stats = (await client.get(engine.url + "/api/v1/stats")).json()
        assert stats["kv_pool"]["in_use"] == 0
