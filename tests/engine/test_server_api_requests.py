"""Request parsing: what clients send is accepted or refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from inferos.engine.api_errors import ApiError
from inferos.engine.api_requests import parse_chat, parse_completion, parse_load

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chat(**fields: Any) -> dict[str, Any]:
    return {**CHAT, **fields}


def test_gaia_agent_fields_are_accepted_and_repeat_penalty_honoured() -> None:
    request = parse_chat(_chat(id_slot=0, repeat_last_n=64, repeat_penalty=1.1,
                               chat_template_kwargs={"enable_thinking": False}, stream=True,
                               stream_options={"include_usage": True}))
    assert request.sampling.repeat_penalty == 1.1
    assert request.stream and request.include_usage


def test_max_completion_tokens_wins_and_stop_string_becomes_a_tuple() -> None:
    request = parse_chat(_chat(max_tokens=5, max_completion_tokens=7, stop="\n"))
    assert request.sampling.max_tokens == 7
    assert request.sampling.stop == ("\n",)


def test_text_content_parts_are_joined() -> None:
    request = parse_chat(_chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
    assert request.messages[0]["content"] == "ab"


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 3}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0]"),
    ({"model": 7}, "model"),
    ({"n": 2}, "n"),
])
def test_invalid_parameters_are_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat(_chat(**fields))
    assert caught.value.status == 400
    assert caught.value.param == param


def test_completion_prompts_string_one_string_list_or_token_ids() -> None:
    assert parse_completion({"prompt": "x"}).prompt == "x"
    assert parse_completion({"prompt": ["x"]}).prompt == "x"
    assert parse_completion({"prompt": [1, 2]}).prompt == (1, 2)
    with pytest.raises(ApiError):
        parse_completion({"prompt": ["x", "y"]})


def test_load_automatic_ctx_size_means_default_and_name_is_required() -> None:
    assert parse_load({"model_name": "m", "ctx_size": -1}).ctx_size is None
    assert parse_load({"model_name": "m", "ctx_size": 65536}).ctx_size == 65536
    with pytest.raises(ApiError):
        parse_load({"ctx_size": 10})
    with pytest.raises(ApiError):
        parse_load({"model_name": "m", "threads": 0})
