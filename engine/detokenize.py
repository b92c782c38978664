"""Text out of a growing token list, one piece per token, never half a character.

Byte-level BPE splits a multi-byte character (an emoji, an accented letter) across tokens;
decoding one token alone gives U+FFFD. Like transformers' TextStreamer and vLLM, decode a
short window of recent tokens and emit only what is new once it no longer ends in U+FFFD.
"""

from __future__ import annotations

from tokenizers import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, skip: frozenset[int] = frozenset()) -> None:
        self._tokenizer = tokenizer
        self._skip = skip
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that is decoded again
        self._read = 0    # the window's tokens whose text has been emitted

    def push(self, token_id: int) -> str:
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        before = self._tokenizer.decode(self._ids[self._prefix:self._read],
                                        skip_special_tokens=False)
        after = self._tokenizer.decode(self._ids[self._prefix:], skip_special_tokens=False)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an incomplete character: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def flush(self) -> str:
        """What is left when generation ends (an incomplete character stays U+FFFD)."""
        before = self._tokenizer.decode(self._ids[self._prefix:self._read],
                                        skip_special_tokens=False)
        after = self._tokenizer.decode(self._ids[self._prefix:], skip_special_tokens=False)
        self._prefix = self._read = len(self._ids)
        return after[len(before):]
