"""Reading a JSON request body at a bounded cost, never raising: for the proxy's own
observations (the data plane's loop) and the controller's run-contexts alike.

Measured on a two-core machine, ``json.loads`` holds the GIL for ~1 ms per MiB of text but
~45 ms per MiB of ``[],``: a body built to be costly could stall the data plane. So a body
over ``MAX_READ_BYTES`` or with more than ``MAX_JSON_VALUES`` brackets and commas is not
parsed (one C pass counts them), and the prompt walk is iterative (depth costs no stack)
and stops at ``MAX_PROMPT_PARTS``. Every limit is far beyond a prompt that fits a local
model's context; a body past one is forwarded untouched, only not looked into.
"""

from __future__ import annotations

import json
from typing import Any

MAX_READ_BYTES = 2 * 1024 * 1024        # ~500k tokens of text
MAX_JSON_VALUES = 50_000                # worst case ~6 ms to parse
MAX_PROMPT_PARTS = 10_000               # strings, lists and objects walked in a prompt
PROMPT_KEYS = ("messages", "prompt", "input")
_STRUCTURE = b"[{,"


def read_json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None: not JSON, not an object, or too costly to parse
    (see the module's docstring). Never raises."""
    if len(raw) > MAX_READ_BYTES:
        return None
    # One C pass; brackets and commas bound the number of values json would build.
    if len(raw) - len(raw.translate(None, _STRUCTURE)) > MAX_JSON_VALUES:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError too
        return None
    return body if isinstance(body, dict) else None


def is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text: json reads a lone surrogate (``"\\ud800"``) into a
    str that cannot be encoded, and one such model name as a Prometheus label would make
    every later scrape fail."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def prompt_text(body: dict[str, Any]) -> str | None:
    """The prompt's text (``messages``, ``prompt`` or ``input``: strings, lists of them, and
    the ``content``/``text`` of objects), joined in order; for counting only, never kept.
    Iterative, so depth costs no stack; None past ``MAX_PROMPT_PARTS``."""
    parts: list[str] = []
    pending: list[Any] = [body.get(key) for key in reversed(PROMPT_KEYS)]
    walked = 0
    while pending:
        value = pending.pop()
        walked += 1
        if walked > MAX_PROMPT_PARTS:
            return None
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            pending.extend(reversed(value))
        elif isinstance(value, dict):
            pending.append(value.get("text"))
            pending.append(value.get("content"))  # popped first: content, then text
    return "\n".join(parts)


