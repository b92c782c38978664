"""Sampling defaults, seeds, logprobs and echo through the API (real SmolLM2, OpenAI SDK)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, sse_events

pytestmark = pytest.mark.model

STORY = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]
# llama.cpp's server defaults, spelt out: what a request that names none must get
LLAMA_CPP = {"temperature": 0.8, "top_p": 0.95, "seed": 42,
             "extra_body": {"top_k": 40, "min_p": 0.05}}


def _client(engine: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/api/v1", api_key="lemonade", max_retries=0)


def _chat(engine: RunningServer, **kwargs: Any) -> str:
    response = _client(engine).chat.completions.create(model=MODEL, messages=STORY,
                                                       max_tokens=40, **kwargs)
    return response.choices[0].message.content or ""


def test_no_parameters_means_llama_cpps_sampling_with_a_fixed_seed(
        engine: RunningServer) -> None:
    default = _chat(engine)
    assert default == _chat(engine)                 # identical requests, identical output
    assert default == _chat(engine, **LLAMA_CPP)    # ... which is llama.cpp's defaults'
    assert default != _chat(engine, temperature=0)  # ... and not greedy decoding


def test_a_seed_reproduces_alone_and_in_a_batch(engine: RunningServer) -> None:
    # cache_prompt false: every run computes the prompt cold, as llama.cpp's field means;
    # a prefix restored from parked (float16) KV may part from a cold run at temperature > 0
    cold = {"temperature": 1.0, "extra_body": {"cache_prompt": False}}
    alone = _chat(engine, seed=1234, **cold)
    assert alone != _chat(engine, seed=4321, **cold)
    assert alone == _chat(engine, seed=1234, **cold)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: _chat(engine, seed=1234, **cold), range(3)))
    assert together == [alone] * 3


def test_chat_logprobs_name_the_tokens_of_the_answer(engine: RunningServer) -> None:
    client = _client(engine)
    response = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=3)
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0.0 and bytes(entry.bytes or []).decode() == entry.token
        tops = entry.top_logprobs
        assert len(tops) == 3 and tops[0].logprob >= tops[1].logprob >= tops[2].logprob
        # greedy: the token taken is the likeliest one
        assert (tops[0].token, tops[0].logprob) == (entry.token, entry.logprob)

    chunks = list(client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or []]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_and_echo(engine: RunningServer) -> None:
    client = _client(engine)
    prompt = "The capital of France is"
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                         temperature=0, logprobs=2)
    choice = response.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 2 and max(top.values()) == v
               for top, v in zip(lp.top_logprobs or [], lp.token_logprobs or [], strict=True))

    echoed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + choice.text
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                         temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == prompt + choice.text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("chat/completions", {"messages": STORY, "top_logprobs": 2}, "top_logprobs"),
    ("chat/completions", {"messages": STORY, "logprobs": True, "top_logprobs": 21},
     "top_logprobs"),
    ("chat/completions", {"messages": STORY, "min_p": 1.5}, "min_p"),
    ("completions", {"prompt": "a", "logprobs": "yes"}, "logprobs"),
    ("completions", {"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
    ("completions", {"prompt": "a", "echo": "yes"}, "echo"),
    ("completions", {"prompt": "a", "cache_prompt": 1}, "cache_prompt"),
])
def test_bad_sampling_fields_are_400_naming_them(engine: RunningServer, path: str,
                                                 body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{engine.url}/api/v1/{path}", json={"model": MODEL, **body},
                          timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")


def test_raw_stream_chunks_carry_logprobs_in_openai_shape(engine: RunningServer) -> None:
    body = {"model": MODEL, "messages": STORY, "max_tokens": 4, "stream": True,
            "temperature": 0, "logprobs": True}
    with httpx.stream("POST", engine.url + "/v1/chat/completions", json=body,
                      timeout=60) as response:
        events = [e for e in sse_events(response.iter_lines()) if isinstance(e, dict)]
    with_text = [e for e in events if e["choices"][0]["delta"].get("content")]
    assert with_text and all(e["choices"][0]["logprobs"]["content"] for e in with_text)
    assert all(entry["top_logprobs"] == [] for e in with_text
               for entry in e["choices"][0]["logprobs"]["content"])
