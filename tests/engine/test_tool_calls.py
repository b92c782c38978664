"""Tools: the prompt they make, the calls parsed out of text (no model), and the calls
the real model makes through the OpenAI SDK, streamed and not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from inferos.engine.api_errors import ApiError
from inferos.engine.chat_template import ChatTemplate
from inferos.engine.tool_calls import (
    JsonObjectEnd,
    ToolChoice,
    ToolStream,
    forced_prefix,
    generic_messages,
    parse_output,
    parse_tools,
    plan_tools,
)
from tests.backends import RunningServer
from tests.engine.engine_process import MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_parse_tools_defaults_and_refusals() -> None:
    assert parse_tools({}) == ((), ToolChoice("none"))
    assert parse_tools({"tools": [WEATHER]})[1] == ToolChoice("auto")
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert parse_tools({"tools": [WEATHER], "tool_choice": named})[1] == \
        ToolChoice("function", "get_weather")
    assert parse_tools({"tools": [WEATHER], "tool_choice": {"type": "function",
                                                            "name": "get_weather"}})[1].name \
        == "get_weather"  # the Responses API's flat form
    for bad in ({"tools": {}}, {"tools": [{"type": "code"}]},
                {"tools": [{"type": "function", "function": {"name": "a b"}}]},
                {"tools": [WEATHER], "tool_choice": named | {"function": {"name": "nope"}}},
                {"tool_choice": "required"}, {"tools": [WEATHER], "tool_choice": "sometimes"}):
        with pytest.raises(ApiError) as refused:
            parse_tools(bad)
        assert refused.value.status == 400


def test_parse_output_finds_calls_of_listed_tools_only() -> None:
    tools = (WEATHER,)
    call = parse_output('{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
                        tools)
    assert call.content is None
    assert call.tool_calls[0]["function"] == {"name": "get_weather",
                                              "arguments": '{"city": "Paris"}'}
    assert call.tool_calls[0]["id"].startswith("call_")
    assert parse_output('{"response": "It is sunny."}', tools).content == "It is sunny."
    hermes = parse_output('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                          "\n</tool_call>", tools)
    assert json.loads(hermes.tool_calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    several = parse_output('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "A"}},'
                           '{"name": "get_weather", "arguments": {"city": "B"}}]}', tools)
    assert len(several.tool_calls) == 2
    # Not a call of a listed tool, or not valid JSON: the text itself, never an invented call
    for text in ('{"tool_call": {"name": "launch", "arguments": {}}}',
                 '{"tool_call": {"name": "get_weather", "arguments": {"city": "Pa',
                 "It is sunny.", '{"tool_call": {"name": "get_weather", "arguments": "x"}}'):
        assert parse_output(text, tools) == type(call)(text, ())


def test_json_object_end_counts_brackets_outside_strings() -> None:
    end = JsonObjectEnd('{"tool_call": {"name": "f", "arguments": {')
    assert end.push('"s": "a } ] \\" {"') is None
    assert end.push("}}} and more") == 3
    assert end.closed
    assert JsonObjectEnd().push("  Sure! {}") is None  # an answer in text never ends early
    assert JsonObjectEnd().push(' {"a": [1, {"b": 2}]} x') == 21


def test_tool_stream_streams_text_and_holds_json() -> None:
    auto = plan_tools((WEATHER,), ToolChoice("auto"), native=False)
    text = ToolStream(auto)
    assert text.push(" ") == ""
    assert text.push("Hello") == " Hello"
    assert text.push(" there") == " there"
    assert text.finish().tool_calls == ()
    held = ToolStream(auto)
    assert held.push('{"tool_call": {"name": "get_weather", ') == ""
    assert held.push('"arguments": {"city": "Rome"}}}') == ""
    assert held.finish().tool_calls[0]["function"]["name"] == "get_weather"
    primed = ToolStream(plan_tools((WEATHER,), ToolChoice("required"), native=False))
    assert primed.plan.prefix == forced_prefix((WEATHER,), ToolChoice("required"), native=False)
    assert primed.push('Rome"}}}') == ""
    assert json.loads(primed.finish().tool_calls[0]["function"]["arguments"]) == \
        {"city": "Rome"}


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    two = ('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "A"}},'
           '{"name": "get_weather", "arguments": {"city": "B"}}]}')
    tools, choice = parse_tools({"tools": [WEATHER], "parallel_tool_calls": False})
    assert not choice.parallel
    (only,) = plan_tools(tools, choice, native=False).parse(two).tool_calls
    assert json.loads(only["function"]["arguments"]) == {"city": "A"}
    assert len(plan_tools(tools, ToolChoice("auto"), native=False).parse(two).tool_calls) == 2
    with pytest.raises(ApiError):
        parse_tools({"tools": [WEATHER], "parallel_tool_calls": "no"})


def test_forced_prefix_primes_the_call_as_a_grammar_would() -> None:
    assert forced_prefix((WEATHER,), ToolChoice("function", "get_weather"), native=False) == \
        '{"tool_call": {"name": "get_weather", "arguments": {"city": "'
    assert forced_prefix((WEATHER, TIME), ToolChoice("required"), native=False) == \
        '{"tool_call": {"name": "'
    assert forced_prefix((TIME,), ToolChoice("required"), native=False) == \
        '{"tool_call": {"name": "get_time", "arguments": {'
    assert forced_prefix((WEATHER,), ToolChoice("auto"), native=False) is None
    assert forced_prefix((WEATHER,), ToolChoice("required"), native=True) is None


def test_generic_messages_carry_tools_calls_and_results() -> None:
    history = [{"role": "system", "content": "Be brief."}, *ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    out = generic_messages(history, (WEATHER,), ToolChoice("auto"))
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.")
    assert '"get_weather"' in out[0]["content"] and '"city"' in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"tool_call": {"name": "get_weather",
                                                           "arguments": {"city": "Paris"}}}
    assert out[3]["role"] == "user"
    assert json.loads(out[3]["content"])["tool_response"]["content"] == "18 C, sunny"
    # tool_choice none: the history is still rendered, the tools are not offered
    plain = generic_messages(ASK, (WEATHER,), ToolChoice("none"))
    assert plain == ASK


def test_a_template_that_reads_tools_is_given_them() -> None:
    source = ("{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}\n"
              "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    template = ChatTemplate(source)
    plan = plan_tools((WEATHER,), ToolChoice("auto"), template.reads_tools)
    assert plan.native and plan.json_start is None and plan.prefix is None
    rendered = template.render(plan.messages(list(ASK)), plan.template_tools)
    assert rendered.startswith("TOOLS:get_weather\n")
    assert not plan_tools((WEATHER,), ToolChoice("auto"),
                          ChatTemplate("{{ messages }}").reads_tools).native


# -- the real model ----------------------------------------------------------------------

def _client(engine: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/api/v1", api_key="lemonade", max_retries=0)


@pytest.mark.model
@pytest.mark.parametrize("choice", ["required",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_comes_back_as_tool_calls(engine: RunningServer, choice: Any) -> None:
    response = _client(engine).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=choice, temperature=0,
        max_tokens=60)  # type: ignore[arg-type]
    choice0 = response.choices[0]
    assert choice0.finish_reason == "tool_calls"
    assert choice0.message.content is None
    (call,) = choice0.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments.get("city"), str) and arguments["city"]


@pytest.mark.model
def test_streamed_tool_call_equals_the_whole_one(engine: RunningServer) -> None:
    client = _client(engine)
    kwargs: dict[str, Any] = dict(model=MODEL, messages=ASK, tools=[WEATHER],
                                  tool_choice="required", temperature=0, max_tokens=60)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [c.choices[0].delta.tool_calls for c in chunks
              if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0][0].index == 0
    assert deltas[0][0].function.name == whole[0].function.name  # type: ignore[index,union-attr]
    assert deltas[0][0].function.arguments == \
        whole[0].function.arguments  # type: ignore[index,union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.model
def test_tool_results_continue_the_conversation(engine: RunningServer) -> None:
    client = _client(engine)
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                           tool_choice="required", temperature=0,
                                           max_tokens=60).choices[0].message
    call = (first.tool_calls or [])[0]
    follow = client.chat.completions.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40,
        messages=[*ASK, first.model_dump(exclude_none=True),  # type: ignore[list-item]
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}])
    answer = follow.choices[0]
    assert answer.message.tool_calls is None and answer.message.content
    assert answer.finish_reason in ("stop", "length")


@pytest.mark.model
def test_responses_api_returns_function_call_items(engine: RunningServer) -> None:
    client = _client(engine)
    flat = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]
    response = client.responses.create(model=MODEL, input="What is the weather in Paris?",
                                       tools=[flat], tool_choice="required",  # type: ignore
                                       temperature=0, max_output_tokens=60)
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    kinds = []
    with client.responses.stream(model=MODEL, input="What is the weather in Paris?",
                                 tools=[flat], tool_choice="required",  # type: ignore
                                 temperature=0, max_output_tokens=60) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert [i.type for i in final.output] == ["function_call"]
    assert final.output[0].arguments == calls[0].arguments  # type: ignore[union-attr]


@pytest.mark.model
def test_bad_tools_are_400(engine: RunningServer) -> None:
    answer = httpx.post(engine.url + "/api/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": ASK, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "unknown"}}})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "tool_choice"


@pytest.mark.model
def test_responses_function_call_output_continues_the_conversation(
        engine: RunningServer) -> None:
    client = _client(engine)
    flat = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]
    first = client.responses.create(model=MODEL, input="What is the weather in Paris?",
                                    tools=[flat], tool_choice="required",  # type: ignore
                                    temperature=0, max_output_tokens=60)
    call = next(item for item in first.output if item.type == "function_call")
    follow = client.responses.create(
        model=MODEL, tools=[flat], temperature=0, max_output_tokens=30,  # type: ignore
        tool_choice="none",
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id,  # type: ignore[union-attr]
                "name": call.name, "arguments": call.arguments},  # type: ignore[union-attr]
               {"type": "function_call_output", "call_id": call.call_id,  # type: ignore
                "output": "18 C and sunny"}])
    assert [item.type for item in follow.output] == ["message"]
    assert follow.output_text
