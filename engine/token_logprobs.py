"""Log-probabilities of generated tokens, in OpenAI's two shapes.

The core puts a ``TokenLogprob`` on each token's event when a request asks for logprobs
(engine/sampling.py computes them from the raw logits it samples from). A ``LogprobTrail``
collects them while the text streams; ``take()`` hands over what came since the last call,
so a stream chunk carries the tokens that made its text (a token whose text the stop matcher
or the detokenizer still holds goes with the next piece).

Token strings: byte-level BPE tokens (SmolLM2's, GPT-2's) map back to their exact bytes,
which OpenAI's ``bytes`` field carries; ``token`` is those bytes as UTF-8 text, with U+FFFD
for a token that holds part of a character, as OpenAI and llama.cpp show it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol

from inferos.engine.sampling_params import TokenLogprob


class TokenNames(Protocol):
    def id_to_token(self, id: int) -> str | None: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable stand-in for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(names: TokenNames, token: int) -> bytes:
    piece = names.id_to_token(token)
    if piece is None:
        return b""
    table = _byte_of_char()
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    # not a byte-level token (a special token such as <|im_end|>): its own text
    return names.decode([token], skip_special_tokens=False).encode("utf-8")


def _entry(names: TokenNames, token: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(names, token)
    # -inf (a token the model gives no chance) has no JSON form; OpenAI's floor is -9999
    return {"token": raw.decode("utf-8", errors="replace"),
            "logprob": logprob if math.isfinite(logprob) else -9999.0, "bytes": list(raw)}


class LogprobTrail:
    """The generated tokens' log-probabilities, in order, handed over in pieces."""

    def __init__(self) -> None:
        self._items: list[tuple[int, TokenLogprob]] = []
        self._taken = 0

    def add(self, token: int, logprob: TokenLogprob) -> None:
        self._items.append((token, logprob))

    def take(self) -> list[tuple[int, TokenLogprob]]:
        fresh = self._items[self._taken:]
        self._taken = len(self._items)
        return fresh


def chat_logprobs(names: TokenNames, items: list[tuple[int, TokenLogprob]]
                  ) -> dict[str, Any]:
    """``choices[].logprobs`` of chat/completions: ``{"content": [...]}``."""
    content = []
    for token, lp in items:
        entry = _entry(names, token, lp.logprob)
        entry["top_logprobs"] = [_entry(names, t, v) for t, v in lp.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(names: TokenNames, items: list[tuple[int, TokenLogprob]],
                        text_offset: int) -> dict[str, Any]:
    """``choices[].logprobs`` of (legacy) completions: parallel lists; ``text_offset`` is
    where each token's text starts in the choice's text (``text_offset`` for the first),
    counted in the tokens' shown text: a character split over tokens counts once per
    U+FFFD piece, so offsets after one are approximate."""
    tokens, values, tops, offsets = [], [], [], []
    at = text_offset
    for token, lp in items:
        entry = _entry(names, token, lp.logprob)
        tokens.append(entry["token"])
        values.append(entry["logprob"])
        top: dict[str, float] = {}
        for t, v in lp.top:
            alternative = _entry(names, t, v)
            # two ids can show as the same text (both U+FFFD): the likelier one stands
            top.setdefault(alternative["token"], alternative["logprob"])
        tops.append(top)
        offsets.append(at)
        at += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


class RequestLogprobs:
    """One request's logprobs in its API's shape, piece by piece as its text goes out;
    ``trail`` is None when the request asked for none (``take`` then gives None)."""

    def __init__(self, names: TokenNames, *, chat: bool, wanted: bool) -> None:
        self.trail = LogprobTrail() if wanted else None
        self._names = names
        self._chat = chat

    def take(self, text_offset: int, *, none_if_empty: bool = False) -> dict[str, Any] | None:
        """What came since the last call; ``text_offset`` is where this piece's text starts
        in the choice's text (completions' ``text_offset``)."""
        if self.trail is None:
            return None
        items = self.trail.take()
        if none_if_empty and not items:
            return None
        if self._chat:
            return chat_logprobs(self._names, items)
        return completion_logprobs(self._names, items, text_offset)
