"""``POST responses``: OpenAI's Responses API on top of the chat path.

A request's ``input`` (a string, or a list of message items whose content is a string or
``input_text`` / ``output_text`` parts) and its ``instructions`` (a system message first)
become chat messages; ``max_output_tokens`` is the chat's ``max_tokens``; the sampling
fields are the chat's, with the same defaults. The answer is a ``response`` object with one
``message`` output item holding one ``output_text`` part, and ``usage`` in the Responses
names. Streamed, it is OpenAI's event sequence (each SSE event named by its ``type`` and
numbered by ``sequence_number``): ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per piece, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done`` and ``response.completed``
(``status: incomplete`` with ``incomplete_details.reason: max_output_tokens`` when the
token cap cut it). An error after the stream started is an ``error`` event, then
``response.failed``. There is no ``[DONE]`` line: the Responses API has none.

Not kept: responses are not stored (``store`` is accepted, nothing is kept), so
``previous_response_id`` is refused with a clear 400 rather than answered without the
conversation it names; ``text.format`` other than plain text, and non-text input parts,
are refused too (this engine has no constrained decoding and no vision).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from inferos.engine.api_errors import ApiError, invalid_param
from inferos.engine.api_requests import GenerationRequest, json_body, parse_chat
from inferos.engine.completion_run import Outcome, collect, run_completion
from inferos.engine.engine_state import ENGINE, EngineState
from inferos.engine.generation_admission import Admission, accounted, admitted, event_stream
from inferos.engine.tool_calls import ToolStream

# Fields that mean the same in a chat request, passed to it as they are.
_CHAT_FIELDS = ("model", "temperature", "top_p", "top_k", "min_p", "seed",
                    "repeat_penalty", "stop", "cache_prompt", "tools", "tool_choice",
                    "parallel_tool_calls")
_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = ("user", "assistant", "system", "developer")


@dataclass(frozen=True)
class ResponsesRequest:
    generation: GenerationRequest
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, Any]


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_param(where, f"'{where}' must be a string or a list of content parts")
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS \
                or not isinstance(part.get("text"), str):
            raise invalid_param(f"{where}[{index}]", "only text content parts (input_text, "
                                                     "output_text) are supported by this model")
        texts.append(part["text"])
    return "".join(texts)


def _item_message(index: int, item: Any) -> dict[str, Any]:
    where = f"input[{index}]"
    if not isinstance(item, dict):
        raise invalid_param(where, f"'{where}' must be an object")
    kind = item.get("type", "message")
    if kind == "function_call":
        arguments = item.get("arguments")
        if not isinstance(item.get("name"), str) or not isinstance(arguments, str):
            raise invalid_param(where, "a function_call item needs a string 'name' and "
                                       "'arguments'")
        call_id = item.get("call_id") or item.get("id") or f"call_{index}"
        return {"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": item["name"], "arguments": arguments}}]}
    if kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            output = json.dumps(output)
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
    if kind != "message":
        raise invalid_param(f"{where}.type", f"input items of type '{kind}' are not supported "
                                             "by this engine (message, function_call and "
                                             "function_call_output are)")
    role = item.get("role")
    if role not in _ROLES:
        raise invalid_param(f"{where}.role", f"'{where}.role' must be one of {', '.join(_ROLES)}")
    # The chat templates know "system"; "developer" is the newer OpenAI name for it.
    return {"role": "system" if role == "developer" else role,
            "content": _content_text(item.get("content"), f"{where}.content")}


def parse_responses(body: Any) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    if body.get("previous_response_id") is not None:
        raise invalid_param("previous_response_id",
                            "this engine does not store responses, so it cannot continue one; "
                            "send the whole conversation in 'input'")
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) \
        else None
    if isinstance(text_format, dict) and text_format.get("type", "text") != "text":
        raise invalid_param("text.format", "only plain text output is supported by this engine")
    raw = body.get("input")
    if isinstance(raw, str):
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        messages = [_item_message(i, item) for i, item in enumerate(raw)]
    else:
        raise invalid_param("input", "'input' must be a string or a non-empty list of items")
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_param("instructions", "'instructions' must be a string")
        messages.insert(0, {"role": "system", "content": instructions})
    max_output = body.get("max_output_tokens")
    if max_output is not None and (isinstance(max_output, bool) or not isinstance(max_output, int)
                                   or max_output < 1):
        raise invalid_param("max_output_tokens",
                            "'max_output_tokens' must be a positive integer")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise invalid_param("metadata", "'metadata' must be an object")
    chat = {name: body[name] for name in _CHAT_FIELDS if name in body}
    if "tools" in chat:
        chat["tools"] = chat_tools(chat["tools"])
    chat.update(messages=messages, stream=body.get("stream", False), max_tokens=max_output)
    return ResponsesRequest(generation=parse_chat(chat), instructions=instructions,
                            max_output_tokens=max_output, metadata=metadata)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponsesShape:
    """One response's objects and events; ``sequence_number`` counts the events sent."""

    request: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: _new_id("resp"))
    item_id: str = field(default_factory=lambda: _new_id("msg"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    sequence: int = 0

    def response(self, status: str, outcome: Outcome | None = None,
                 output: list[dict[str, Any]] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        sampling = self.request.generation.sampling
        choice = self.request.generation.tool_choice
        incomplete = None
        if outcome is not None and outcome.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": error, "incomplete_details": incomplete,
            "instructions": self.request.instructions,
            "max_output_tokens": self.request.max_output_tokens, "model": self.model,
            "output": output or [], "parallel_tool_calls": choice.parallel,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "text": {"format": {"type": "text"}},
            # the Responses' flat form of a named function
            "tool_choice": {"type": "function", "name": choice.name}
            if choice.mode == "function" else choice.mode,
            "tools": [_response_tool(t) for t in self.request.generation.tools],
            "truncation": "disabled", "metadata": self.request.metadata,
            "usage": None if outcome is None else usage(outcome),
        }
        if outcome is not None:
            body["timings"] = outcome.timings.as_dict()
        return body

    def message_item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_text_part(text)]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant",
                "content": content}

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def text_event(self, kind: str, **fields: Any) -> bytes:
        return self.event(kind, item_id=self.item_id, output_index=0, content_index=0, **fields)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat tool (``{"type": "function", "function": {...}}``) in the Responses shape,
    which is flat (``{"type": "function", "name", "parameters", ...}``)."""
    function = tool.get("function", {})
    return {"type": "function", "name": function.get("name"),
            "description": function.get("description"),
            "parameters": function.get("parameters"), "strict": function.get("strict")}


def chat_tools(tools: Any) -> Any:
    """Responses tools are flat; the chat path takes them nested under ``function``."""
    if not isinstance(tools, list):
        return tools
    return [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            if isinstance(t, dict) and t.get("type") == "function" and "function" not in t
            else t for t in tools]


def usage(outcome: Outcome) -> dict[str, Any]:
    return {"input_tokens": outcome.prompt_tokens,
            "input_tokens_details": {"cached_tokens": outcome.timings.cache_n},
            "output_tokens": outcome.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def function_call_item(call: dict[str, Any], status: str = "completed",
                       arguments: str | None = None) -> dict[str, Any]:
    function = call["function"]
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"),
            "call_id": call["id"], "name": function["name"],
            "arguments": function["arguments"] if arguments is None else arguments,
            "status": status}


def _output(shape: ResponsesShape, text: str | None,
            calls: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    message = [shape.message_item("completed", text or "")] if text or not calls else []
    return message + [function_call_item(call) for call in calls]


def _parsed(admission: Admission, text: str) -> tuple[str | None, tuple[dict[str, Any], ...]]:
    tools = admission.active_tools
    if tools is None:
        return text, ()
    parsed = tools.parse(text)
    return parsed.content, parsed.tool_calls


async def responses(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    wanted = parse_responses(await json_body(request))
    async with admitted(engine, wanted.generation) as admission:
        state, generation = admission.state, admission.generation
        shape = ResponsesShape(wanted, state.name)

        async def answer() -> tuple[web.StreamResponse, Outcome | None]:
            if generation.stream:
                return await _stream(request, engine, admission, shape)
            outcome, text = await collect(engine.slot, state, admission.prompt_ids,
                                          generation.sampling)
            content, calls = _parsed(admission, text)
            return web.json_response(shape.response(
                "completed", outcome=outcome, output=_output(shape, content, calls))), outcome

        return await accounted(request, engine, state, answer)


async def _stream(request: web.Request, engine: EngineState, admission: Admission,
                  shape: ResponsesShape) -> tuple[web.StreamResponse, Outcome | None]:
    response = event_stream()
    await response.prepare(request)
    await response.write(shape.event("response.created", response=shape.response("in_progress")))
    await response.write(shape.event("response.in_progress",
                                     response=shape.response("in_progress")))
    plan = admission.active_tools
    tools = None if plan is None else ToolStream(plan)
    written: list[str] = []
    outcome: Outcome | None = None

    async def text(piece: str) -> None:
        if not written:
            # The message item opens with its first text, so an answer that is only
            # tool calls has no empty message before them.
            await response.write(shape.event("response.output_item.added", output_index=0,
                                             item=shape.message_item("in_progress", None)))
            await response.write(shape.text_event("response.content_part.added",
                                                  part=_text_part("")))
        written.append(piece)
        await response.write(shape.text_event("response.output_text.delta", delta=piece,
                                              logprobs=[]))

    calls: tuple[dict[str, Any], ...] = ()
    try:
        async with contextlib.aclosing(run_completion(
                engine.slot, admission.state, admission.prompt_ids,
                admission.generation.sampling)) as items:
            async for item in items:
                if isinstance(item, str):
                    piece = item if tools is None else tools.push(item)
                    if piece:
                        await text(piece)
                else:
                    outcome = item
    except ApiError as exc:
        engine.stats.failed += 1
        await response.write(shape.event("error", code=exc.code, message=exc.message,
                                         param=exc.param))
        await response.write(shape.event("response.failed", response=shape.response(
            "failed", error={"code": exc.code or "server_error", "message": exc.message})))
        await response.write_eof()
        return response, None
    assert outcome is not None
    if tools is not None:
        parsed = tools.finish()
        if parsed.content:
            await text(parsed.content)
        calls = parsed.tool_calls
    if not written and not calls:
        await text("")
    if written:
        whole = "".join(written)
        await response.write(shape.text_event("response.output_text.done", text=whole,
                                              logprobs=[]))
        await response.write(shape.text_event("response.content_part.done",
                                              part=_text_part(whole)))
        await response.write(shape.event("response.output_item.done", output_index=0,
                                         item=shape.message_item("completed", whole)))
    for offset, call in enumerate(calls):
        index = offset + (1 if written else 0)
        call_item = function_call_item(call)
        await response.write(shape.event("response.output_item.added", output_index=index,
                                         item=function_call_item(call, "in_progress", "")))
        await response.write(shape.event("response.function_call_arguments.delta",
                                         item_id=call_item["id"], output_index=index,
                                         delta=call_item["arguments"]))
        await response.write(shape.event("response.function_call_arguments.done",
                                         item_id=call_item["id"], output_index=index,
                                         arguments=call_item["arguments"]))
        await response.write(shape.event("response.output_item.done", output_index=index,
                                         item=call_item))
    final = shape.response("completed", outcome=outcome,
                           output=_output(shape, "".join(written) if written else None, calls))
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    await response.write(shape.event(kind, response=final))
    await response.write_eof()
    return response, outcome
