"""POST embeddings (the real model's pooled hidden states) and POST reranking's refusal."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL

pytestmark = pytest.mark.model

TEXTS = ["Paris is the capital of France.", "The capital of France is Paris.",
         "Bananas are yellow fruit."]


def _client(engine: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/api/v1", api_key="lemonade", max_retries=0)


def _post(engine: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{engine.url}/api/v1/{path}", json=body, timeout=60)


def test_embeddings_are_unit_vectors_that_rank_meaning(engine: RunningServer) -> None:
    result = _client(engine).embeddings.create(model=MODEL, input=TEXTS)  # SDK asks base64
    vectors = np.array([item.embedding for item in result.data])
    assert vectors.shape == (3, 576)  # SmolLM2-135M's hidden size
    assert [item.index for item in result.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 5


def test_embedding_is_its_text_alone_whatever_comes_with_it(engine: RunningServer) -> None:
    alone = _post(engine, "embeddings", {"model": MODEL, "input": TEXTS[2]}).json()
    batch = _post(engine, "embeddings", {"model": MODEL, "input": TEXTS}).json()
    assert np.allclose(alone["data"][0]["embedding"], batch["data"][2]["embedding"], atol=1e-5)
    ids = httpx.post(f"{engine.url}/api/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": TEXTS[2], "max_tokens": 1, "temperature": 0}).json()
    tokens = ids["usage"]["prompt_tokens"]
    encoded = _post(engine, "embeddings", {"model": MODEL, "input": TEXTS[2],
                                           "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), "<f4")
    assert np.allclose(decoded, alone["data"][0]["embedding"], atol=1e-6)
    assert encoded["usage"]["prompt_tokens"] == tokens


def test_embeddings_of_token_ids_equal_those_of_the_text(engine: RunningServer) -> None:
    by_text = _post(engine, "embeddings", {"model": MODEL, "input": "Hello world"}).json()
    # "Hello world" is tokens [19556, 905] in SmolLM2's vocabulary
    by_ids = _post(engine, "embeddings", {"model": MODEL, "input": [19556, 905]}).json()
    assert np.allclose(by_text["data"][0]["embedding"], by_ids["data"][0]["embedding"],
                       atol=1e-5)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": ""}, 400, "input[0]"),
    ({"input": []}, 400, "input"),
    ({"input": [1, "a"]}, 400, "input"),
    ({"input": [99999999]}, 400, "input[0]"),
    ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "hi", "dimensions": 64}, 400, "dimensions"),
    ({"input": "word " * 1100}, 400, "input"),  # over the 1,024-token context
    ({"input": "hi", "model": "no-such-model"}, 404, "model"),
])
def test_bad_embedding_requests(engine: RunningServer, body: dict[str, Any], status: int,
                                param: str) -> None:
    answer = _post(engine, "embeddings", {"model": MODEL, **body})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param


def test_reranking_is_a_clear_not_supported(engine: RunningServer) -> None:
    answer = _post(engine, "reranking", {"model": MODEL, "query": "capital of France",
                                         "documents": TEXTS})
    assert answer.status_code == 501
    error = answer.json()["error"]
    assert error["code"] == "reranking_not_supported" and "cannot rerank" in error["message"]
    bad = _post(engine, "reranking", {"model": MODEL, "query": "q", "documents": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents"
    unknown = _post(engine, "reranking", {"model": "nope", "query": "q", "documents": ["d"]})
    assert unknown.status_code == 404
