"""The model's own chat template, rendered as transformers renders it.

A sandboxed jinja2 environment (templates ship with models), ``trim_blocks`` and
``lstrip_blocks`` as transformers sets them, and ``raise_exception`` for templates that
refuse a conversation (a role they do not know, a missing user turn).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """The template refused the messages."""


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        # Whether the template renders a request's tools (engine/tool_calls.py)
        self.reads_tools = re.search(r"\btools\b", source) is not None
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> str:
        """``tools`` go to templates that read them (engine/tool_calls.py decides)."""
        for message in messages:
            if isinstance(message.get("content"), list):
                # OpenAI's content parts: this is a text model, so the text parts, joined.
                message["content"] = "".join(part.get("text", "") for part in message["content"]
                                             if isinstance(part, dict))
        extra = {} if tools is None else {"tools": tools}
        return self._template.render(messages=list(messages), add_generation_prompt=True,
                                     bos_token=self._bos, eos_token=self._eos, **extra)
