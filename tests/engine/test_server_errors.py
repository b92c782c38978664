"""Bad input gets Lemonade's error shape and the right status, and nothing generates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, engine_process

pytestmark = pytest.mark.model

MESSAGES = [{"role": "user", "content": "Say hi."}]


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def _chat(engine: RunningServer, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **fields}
    return httpx.post(engine.url + "/api/v1/chat/completions", json=body, timeout=120)


def test_unknown_model_is_404(engine: RunningServer) -> None:
    error = _error(_chat(engine, model="no-such-model"), 404)
    assert error["code"] == "model_not_found"
    _error(httpx.get(engine.url + "/api/v1/models/no-such-model"), 404)
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=engine.url + "/api/v1", api_key="x", max_retries=0) \
            .chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_saying_so(engine: RunningServer,
                                                     stream: bool) -> None:
    # The session engine runs with --ctx-size 1024.
    long = [{"role": "user", "content": "word " * 1500}]
    error = _error(_chat(engine, messages=long, stream=stream), 400)
    assert error["code"] == "context_length_exceeded"
    assert "1024" in error["message"] and "tokens" in error["message"]
    tokens = int(error["message"].split("prompt has ")[1].split()[0])
    assert tokens > 1024


@pytest.mark.parametrize("fields", [
    {"max_tokens": -5},
    {"max_completion_tokens": "ten"},
    {"temperature": 3},
    {"temperature": -0.1},
    {"top_p": 1.5},
    {"top_k": "many"},
    {"stop": [1, 2]},
    {"messages": "hello"},
    {"stream": "true"},
])
def test_invalid_parameters_are_400(engine: RunningServer, fields: dict[str, Any]) -> None:
    error = _error(_chat(engine, **fields), 400)
    assert error["param"] == next(iter(fields))


def test_malformed_json_is_400(engine: RunningServer) -> None:
    for path in ("/api/v1/chat/completions", "/api/v1/completions", "/api/v1/load"):
        response = httpx.post(engine.url + path, content=b'{"model": "x", ',
                              headers={"Content-Type": "application/json"})
        assert _error(response, 400)["code"] == "invalid_json"
    _error(httpx.post(engine.url + "/api/v1/chat/completions", json=[1, 2]), 400)


def test_unknown_route_is_404_in_the_same_shape(engine: RunningServer) -> None:
    _error(httpx.get(engine.url + "/api/v1/no-such-endpoint"), 404)


@pytest.fixture(scope="module")
def keyed_engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("keyed"), "--api-key", "s3cret",
                        "--ctx-size", "256") as server:
        yield server


def test_api_key_required_only_when_configured(engine: RunningServer,
                                               keyed_engine: RunningServer) -> None:
    # Without a key configured, GAIA's "Bearer lemonade" and no header at all both work.
    assert _chat(engine, max_tokens=1).status_code == 200
    assert httpx.post(engine.url + "/api/v1/chat/completions", timeout=120,
                      headers={"Authorization": "Bearer lemonade"},
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
                      ).status_code == 200
    url = keyed_engine.url + "/api/v1/chat/completions"
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    assert _error(httpx.post(url, json=body), 401)["type"] == "authentication_error"
    _error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
    _error(httpx.get(keyed_engine.url + "/api/v1/health"), 401)
    ok = httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=120)
    assert ok.status_code == 200
    assert httpx.get(keyed_engine.url + "/api/v1/live").status_code == 200
    client = openai.OpenAI(base_url=keyed_engine.url + "/api/v1", api_key="s3cret")
    assert client.models.list().data[0].id == MODEL
