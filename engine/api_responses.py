"""The JSON bodies the engine answers with, in OpenAI's shapes as Lemonade serves them.

``ResponseShape`` knows whether a request was a chat or a completion and builds its full
response, its stream chunks (first chunk carries the role, the last one ``finish_reason``
and ``timings``) and the usage chunk (``choices: []``) of ``stream_options.include_usage``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from inferos.engine.completion_run import Outcome


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ResponseShape:
    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", _new_id("chatcmpl" if self.chat else "cmpl"))

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    def full(self, text: str | None, outcome: Outcome,
             logprobs: dict[str, Any] | None = None,
             tool_calls: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
        """``tool_calls``: the chat's parsed calls (``content`` is then None unless the
        model wrote text before them)."""
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = list(tool_calls)
            choice: dict[str, Any] = {"index": 0, "message": message}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text}
            obj = "text_completion"
        choice.update(logprobs=logprobs, finish_reason=outcome.finish_reason)
        body = self._envelope(obj, [choice])
        body["usage"] = outcome.usage()
        body["timings"] = outcome.timings.as_dict()
        return body

    def _chunk(self, delta: dict[str, Any] | str, finish_reason: str | None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta}
            obj = "text_completion"
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        return self._envelope(obj, [choice])

    def first_chunk(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant's role and empty content; completions don't."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def text_chunk(self, text: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._chunk({"content": text} if self.chat else text, None, logprobs)

    def tool_calls_chunk(self, tool_calls: tuple[dict[str, Any], ...]) -> dict[str, Any]:
        """All of a chat's tool calls in one delta, each with its ``index``."""
        return self._chunk({"tool_calls": [{"index": i, **call}
                                           for i, call in enumerate(tool_calls)]}, None)

    def final_chunk(self, outcome: Outcome,
                    logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk = self._chunk({} if self.chat else "", outcome.finish_reason, logprobs)
        chunk["timings"] = outcome.timings.as_dict()
        return chunk

    def usage_chunk(self, outcome: Outcome) -> dict[str, Any]:
        chunk = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        chunk["usage"] = outcome.usage()
        return chunk


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
