"""Tools on the chat path: ``tools`` and ``tool_choice`` into the prompt, tool calls out of
the generated text.

Two ways in, as llama.cpp's server has them:

- **The model's own template**, when its chat template reads ``tools``: the template is
  given them (and the conversation's earlier calls and results as OpenAI sends them), and
  the output is parsed for the Hermes / Qwen form ``<tool_call>{"name", "arguments"}
  </tool_call>``, the form those templates teach.
- **The generic tool prompt** otherwise (SmolLM2's template has no tools): llama.cpp's
  "generic" format. A system message lists the tools with their JSON Schemas and asks for a
  JSON object, ``{"tool_call": {"name", "arguments"}}`` to call one or ``{"response": text}``
  to answer; earlier calls are rendered in that JSON and tool results as
  ``{"tool_response": ...}`` user turns, which every template can hold.

llama.cpp constrains the output to that schema with a grammar; this engine has no
grammar, so it forces what it can instead: with ``tool_choice`` naming a function (or
``required`` with one tool), the assistant's turn is primed with
``{"tool_call": {"name": "<name>", "arguments": {`` and the model writes the arguments;
with ``required`` and several tools, with ``{"tool_call": {"name": "``. Whenever the answer
is a JSON object, generation ends where the object closes (``JsonObjectEnd``), so the model
cannot ramble past it. What cannot be forced is reported as it is: output that is not a
valid call of a listed tool comes back as plain ``content`` with its own finish reason,
never as an invented call. ``tool_choice: none`` leaves tools out of the prompt.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any

from inferos.engine.api_errors import invalid_param

GENERIC_INSTRUCTIONS = (
    "You can call the following tools. Each one's arguments follow its JSON Schema.\n"
    "{tools}\n"
    'To call a tool, reply with only a JSON object: {{"tool_call": {{"name": "<tool name>", '
    '"arguments": {{"<argument>": <value>}}}}}}. To answer without a tool, reply with only '
    '{{"response": "<your answer>"}}.'
)
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolChoice:
    """``mode``: auto | none | required | function (then ``name`` is the function);
    ``parallel``: ``parallel_tool_calls`` (false: only the first call is kept)."""

    mode: str = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def as_openai(self) -> Any:
        if self.mode == "function":
            return {"type": "function", "function": {"name": self.name}}
        return self.mode


def _function_name(tool: Any, index: int) -> str:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
            or not isinstance(tool.get("function"), dict):
        raise invalid_param(where, f"'{where}' must be {{\"type\": \"function\", "
                                   "\"function\": {\"name\", ...}} (only function tools exist "
                                   "here)")
    name = tool["function"].get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
        raise invalid_param(f"{where}.function.name", "a tool's name must be 1-64 letters, "
                                                      "digits, '_', '-' or '.'")
    parameters = tool["function"].get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_param(f"{where}.function.parameters",
                            "'parameters' must be a JSON Schema object")
    return name


def parse_tools(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], ToolChoice]:
    raw = body.get("tools")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise invalid_param("tools", "'tools' must be a list")
    names = [_function_name(tool, i) for i, tool in enumerate(raw)]
    choice = body.get("tool_choice")
    if choice is None:
        parsed = ToolChoice("auto" if raw else "none")
    elif choice in ("auto", "none", "required"):
        parsed = ToolChoice(choice)
    elif isinstance(choice, dict) and choice.get("type") == "function":
        # Chat nests the name under "function"; the Responses API puts it beside "type".
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        if name not in names:
            raise invalid_param("tool_choice", f"'tool_choice' names '{name}', which is not "
                                               "in 'tools'")
        parsed = ToolChoice("function", name)
    else:
        raise invalid_param("tool_choice", "'tool_choice' must be auto, none, required or "
                                           "{\"type\": \"function\", \"function\": {\"name\"}}")
    if parsed.mode in ("required", "function") and not raw:
        raise invalid_param("tool_choice", f"'tool_choice' {parsed.mode} needs 'tools'")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise invalid_param("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
    return tuple(raw), replace(parsed, parallel=parallel)


def _call_json(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments", "{}")
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        pass  # kept as the client sent it
    return {"name": function.get("name"), "arguments": arguments}


def generic_messages(messages: list[dict[str, Any]], tools: tuple[dict[str, Any], ...],
                     choice: ToolChoice) -> list[dict[str, Any]]:
    """The conversation for a template without tools: the tool instructions in the system
    message (a first one is made if there is none), earlier calls and results as JSON."""
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            shown = [_call_json(c) for c in calls if isinstance(c, dict)]
            body = {"tool_call": shown[0]} if len(shown) == 1 else {"tool_calls": shown}
            out.append({"role": "assistant", "content": json.dumps(body)})
        elif message.get("role") == "tool":
            result = {"tool_response": {"tool_call_id": message.get("tool_call_id"),
                                        "content": message.get("content", "")}}
            out.append({"role": "user", "content": json.dumps(result)})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    if choice.mode == "none" or not tools:
        return out
    listed = [t for t in tools if choice.mode != "function"
              or t["function"]["name"] == choice.name]
    catalog = json.dumps([{"name": t["function"]["name"],
                           "description": t["function"].get("description", ""),
                           "parameters": t["function"].get("parameters", {})}
                          for t in listed], indent=1)
    instructions = GENERIC_INSTRUCTIONS.format(tools=catalog)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content', '')}\n\n{instructions}"}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out


def forced_prefix(tools: tuple[dict[str, Any], ...], choice: ToolChoice,
                  native: bool) -> str | None:
    """The text the assistant's turn is primed with, or None when nothing is forced."""
    if native or choice.mode not in ("required", "function"):
        return None
    name = choice.name if choice.mode == "function" else \
        tools[0]["function"]["name"] if len(tools) == 1 else None
    if name is None:
        return '{"tool_call": {"name": "'
    prefix = '{"tool_call": {"name": ' + json.dumps(name) + ', "arguments": {'
    # The first argument's name too, where the schema names one (required ones first), as
    # a grammar would force it: a small model otherwise copies the instructions' "{...}".
    schema = next(t for t in tools if t["function"]["name"] == name)["function"].get(
        "parameters") or {}
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        required = [p for p in schema.get("required") or [] if p in properties]
        first = required[0] if required else next(iter(properties))
        prefix += json.dumps(first) + ": "
        if isinstance(properties[first], dict) and properties[first].get("type") == "string":
            prefix += '"'
    return prefix


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request's tools go into its prompt and come out of its output;
    ``native``: the model's template reads ``tools``; ``prefix``: the text the answer is
    primed with (``forced_prefix``), None when nothing is forced. Made by ``plan_tools``."""

    tools: tuple[dict[str, Any], ...]
    choice: ToolChoice
    native: bool
    prefix: str | None

    @property
    def active(self) -> bool:
        """Whether the output is parsed for tool calls."""
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def json_start(self) -> str | None:
        """The text a JSON answer starts from (the prefix, or "" for one the model may
        open): generation ends where it closes. None: no such end (native templates may
        write several calls, and text around them)."""
        if not self.active or self.native:
            return None
        return self.prefix or ""

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return messages if self.native else generic_messages(messages, self.tools,
                                                             self.choice)

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return list(self.tools) if self.native and self.active else None

    def parse(self, generated: str) -> ParsedOutput:
        """The calls in the generated text (after the prefix), or it as content; one call
        at most unless ``parallel_tool_calls``."""
        parsed = parse_output((self.prefix or "") + generated, self.tools)
        if not self.choice.parallel and len(parsed.tool_calls) > 1:
            return ParsedOutput(parsed.content, parsed.tool_calls[:1])
        return parsed


def plan_tools(tools: tuple[dict[str, Any], ...], choice: ToolChoice,
               native: bool) -> ToolPlan:
    active = bool(tools) and choice.mode != "none"
    return ToolPlan(tools, choice, native,
                    forced_prefix(tools, choice, native) if active else None)


class JsonObjectEnd:
    """Tracks text that may be a JSON object: ``closed`` once the object that opened at its
    first non-blank character has closed (brackets counted outside strings). Text that
    does not open with ``{`` never closes."""

    def __init__(self, prefix: str = "") -> None:
        self.depth = 0
        self.started = False
        self.refused = False
        self.in_string = False
        self.escaped = False
        self.closed = False
        self.push(prefix)

    def push(self, text: str) -> int | None:
        """Feeds ``text``; returns the index just past the closing brace when it is in this
        piece, else None."""
        for index, char in enumerate(text):
            if self.closed or self.refused:
                return None
            if not self.started:
                if char.isspace():
                    continue
                if char != "{":
                    self.refused = True
                    return None
                self.started = True
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                continue
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
                    return index + 1
        return None


@dataclass(frozen=True)
class ParsedOutput:
    content: str | None
    tool_calls: tuple[dict[str, Any], ...]


def _as_call(raw: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or raw.get("name") not in names:
        return None
    arguments = raw.get("arguments", raw.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": raw["name"], "arguments": json.dumps(arguments)}}


def _first_object(text: str) -> Any:
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
    except json.JSONDecodeError:
        return None
    return value


def parse_output(text: str, tools: tuple[dict[str, Any], ...]) -> ParsedOutput:
    """Tool calls of listed tools in ``text`` (the primed prefix included), or the text as
    content when it holds none; a generic ``{"response": ...}`` is unwrapped."""
    names = {t["function"]["name"] for t in tools}
    hermes = _HERMES_CALL.findall(text)
    if hermes:
        calls = [_as_call(_first_object(raw), names) for raw in hermes]
        if calls and all(calls):
            before = text[:text.index("<tool_call>")].strip()
            return ParsedOutput(before or None, tuple(c for c in calls if c))
        return ParsedOutput(text, ())
    value = _first_object(text)
    if isinstance(value, dict):
        if "tool_call" in value or "tool_calls" in value:
            raw_calls = value.get("tool_calls")
            if not isinstance(raw_calls, list):
                raw_calls = [value.get("tool_call")]
            calls = [_as_call(raw, names) for raw in raw_calls]
            if calls and all(calls):
                return ParsedOutput(None, tuple(c for c in calls if c))
        elif isinstance(value.get("response"), str) and len(value) == 1:
            return ParsedOutput(value["response"], ())
        elif _as_call(value, names) is not None:  # a bare {"name", "arguments"}
            return ParsedOutput(None, (_as_call(value, names),))  # type: ignore[arg-type]
    return ParsedOutput(text, ())


class ToolStream:
    """Streaming with tools: plain text streams as it comes; text that opens a JSON object
    (or a ``<tool_call>``), and all of a primed answer, is held until the end and sent as
    tool calls or content then."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""
        self.holding = self.decided = plan.prefix is not None

    def push(self, piece: str) -> str:
        if self.decided and not self.holding:
            return piece
        self.held += piece
        if self.decided:
            return ""
        start = self.held.lstrip()
        if start.startswith(("{", "<tool_call>")):
            self.decided = self.holding = True
            return ""
        if not start or "<tool_call>".startswith(start):
            return ""  # blank so far, or it may still become <tool_call>
        self.decided = True
        out, self.held = self.held, ""
        return out

    def finish(self) -> ParsedOutput:
        if not self.holding:
            held, self.held = self.held, ""
            return ParsedOutput(held or None, ())
        return self.plan.parse(self.held)
