"""Prompt-lookup drafts: guess the next tokens from what the sequence already holds.

Tasks grounded in their input (edit, summarize, rewrite, copy) repeat runs of the prompt.
``draft(history, max_draft)`` finds the most recent earlier occurrence of the sequence's
last ``n`` tokens (longest ``n`` first, from ``MAX_NGRAM`` down to ``MIN_NGRAM``) and
proposes the tokens that followed it, up to ``max_draft``. No draft model is needed: the
target model verifies the guess in one run (engine/batch_scheduler.py), so a wrong guess
costs time, never output (RUNTIME_FACTS.md, "Prompt-lookup decoding": n = 3, up to 8).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_NGRAM", "MIN_NGRAM", "draft"]

MAX_NGRAM = 3
MIN_NGRAM = 2  # a single token repeats too often to predict what follows it
SEARCH_WINDOW = 4096  # the most recent tokens searched: bounds the cost of a step


def draft(history: list[int] | np.ndarray, max_draft: int) -> list[int]:
    """The continuation of the most recent earlier match of the longest tail n-gram of
    ``history``, at most ``max_draft`` tokens; empty when nothing matches."""
    if max_draft <= 0:
        return []
    tokens = np.asarray(history[-SEARCH_WINDOW:], dtype=np.int64)
    size = len(tokens)
    for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
        if size <= n:
            continue
        tail = tokens[size - n:]
        # Candidate starts i < size - n whose n tokens equal the tail and that have at
        # least one token after them.
        starts = size - n
        match = np.ones(starts, dtype=bool)
        for offset in range(n):
            match &= tokens[offset:offset + starts] == tail[offset]
        found = np.flatnonzero(match)
        if found.size:
            begin = int(found[-1]) + n  # the most recent occurrence: the likeliest
            return tokens[begin:begin + max_draft].tolist()
    return []
