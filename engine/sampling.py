"""Choosing the next token from logits: greedy at temperature 0, else top-k/top-p sampling.

llama.cpp's order: repeat penalty on the raw logits, then top-k, top-p, temperature. A
seeded ``numpy`` generator per request makes a seeded request repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], penalty: float,
                         last_n: int = 64) -> np.ndarray:
    """llama.cpp's penalty over the last ``last_n`` tokens: positive logits are divided,
    negative ones multiplied, so a seen token always becomes less likely."""
    if penalty == 1.0 or not history:
        return logits
    seen = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    out = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def next_token(logits: np.ndarray, *, temperature: float, top_k: int, top_p: float,
               repeat_penalty: float, history: Sequence[int],
               rng: np.random.Generator) -> int:
    logits = apply_repeat_penalty(logits.astype(np.float32, copy=False), history,
                                  repeat_penalty)
    if temperature <= 0.0:
        return int(np.argmax(logits))
    candidates = np.argsort(-logits)
    if top_k > 0:
        candidates = candidates[:top_k]
    chosen = logits[candidates].astype(np.float64) / temperature
    probs = np.exp(chosen - chosen.max())
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        candidates, probs = candidates[:keep], probs[:keep]
        probs /= probs.sum()
    return int(candidates[rng.choice(len(candidates), p=probs)])
