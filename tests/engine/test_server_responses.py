"""POST responses on the real model: the OpenAI SDK's Responses calls, streamed and not."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, named_sse_events

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"


def _client(engine: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/api/v1", api_key="lemonade", max_retries=0)


def test_response_answers_as_the_chat_does(engine: RunningServer) -> None:
    client = _client(engine)
    response = client.responses.create(model=MODEL, input=QUESTION, temperature=0,
                                       max_output_tokens=24)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=24)
    assert response.output_text == chat.choices[0].message.content
    assert "Paris" in response.output_text
    assert response.object == "response" and response.status == "completed"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage is not None
    assert response.usage.input_tokens == chat.usage.prompt_tokens  # type: ignore[union-attr]
    assert response.usage.output_tokens == chat.usage.completion_tokens  # type: ignore[union-attr]


def test_instructions_and_message_items_are_the_chat_messages(engine: RunningServer) -> None:
    client = _client(engine)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Hi, I am Ann."}]},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Hello Ann!"}]},
             {"role": "user", "content": "What is my name?"}]
    response = client.responses.create(model=MODEL, input=items,  # type: ignore[arg-type]
                                       instructions="Answer in one short sentence.",
                                       temperature=0, max_output_tokens=20)
    chat = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=20, messages=[
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "Hi, I am Ann."},
        {"role": "assistant", "content": "Hello Ann!"},
        {"role": "user", "content": "What is my name?"}])
    assert response.output_text == chat.choices[0].message.content


def test_streamed_response_is_the_event_sequence_and_the_same_text(
        engine: RunningServer) -> None:
    client = _client(engine)
    whole = client.responses.create(model=MODEL, input=QUESTION, temperature=0,
                                    max_output_tokens=64)
    kinds, deltas = [], []
    with client.responses.stream(model=MODEL, input=QUESTION, temperature=0,
                                 max_output_tokens=64) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert whole.status == "completed"  # the answer ends before the cap
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert "".join(deltas) == whole.output_text == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_capped_response_is_incomplete_streamed_and_not(engine: RunningServer) -> None:
    client = _client(engine)
    response = client.responses.create(model=MODEL, input="Tell me a long story.",
                                       temperature=0, max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    raw = httpx.post(engine.url + "/api/v1/responses", timeout=60, json={
        "model": MODEL, "input": "Tell me a long story.", "temperature": 0,
        "max_output_tokens": 5, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = named_sse_events(raw.text)
    assert [e[1]["sequence_number"] for e in events] == list(range(len(events)))
    assert all(kind == data["type"] for kind, data in events)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 5
    assert "[DONE]" not in raw.text


@pytest.mark.parametrize(("body", "param"), [
    ({"input": ""}, None),
    ({"input": []}, "input"),
    ({"input": 3}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"input": "hi", "instructions": 5}, "instructions"),
])
def test_bad_responses_requests_are_400_naming_the_field(engine: RunningServer,
                                                         body: dict[str, Any],
                                                         param: str | None) -> None:
    answer = httpx.post(engine.url + "/api/v1/responses", json={"model": MODEL, **body},
                        timeout=60)
    if param is None:  # an empty string is a valid (empty) user turn
        assert answer.status_code == 200
        return
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
