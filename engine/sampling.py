"""Choosing the next token from logits: greedy at temperature 0, else llama.cpp's chain.

llama.cpp's default order: repeat penalty on the raw logits, then top-k, top-p and min-p on
the untempered distribution, then temperature over what is left. A seeded ``numpy``
generator per request makes a request repeatable. ``token_logprobs`` gives OpenAI's
``logprobs``: the log-probabilities of the model's own (raw, untempered) distribution, as
llama.cpp's server reports them.
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


def _best_first(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Token ids by falling logit; only the ``top_k`` best when ``top_k`` > 0. A partition
    first: sorting all 49,152 logits for every token costs milliseconds, 40 of them nothing."""
    if 0 < top_k < logits.shape[0]:
        part = np.argpartition(-logits, top_k - 1)[:top_k]
        return part[np.argsort(-logits[part], kind="stable")]
    return np.argsort(-logits, kind="stable")


def next_token(logits: np.ndarray, *, temperature: float, top_k: int, top_p: float,
               repeat_penalty: float, history: Sequence[int],
               rng: np.random.Generator, min_p: float = 0.0) -> int:
    logits = apply_repeat_penalty(logits.astype(np.float32, copy=False), history,
                                  repeat_penalty)
    if temperature <= 0.0:
        return int(np.argmax(logits))
    candidates = _best_first(logits, top_k)
    chosen = logits[candidates].astype(np.float64)
    probs = np.exp(chosen - chosen[0])
    probs /= probs.sum()
    keep = len(candidates)
    if top_p < 1.0:
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), top_p) + 1))
    if min_p > 0.0:
        # min-p: tokens at least min_p times as likely as the best (the best always stays)
        keep = min(keep, max(1, int(np.count_nonzero(probs >= min_p * probs[0]))))
    candidates, chosen = candidates[:keep], chosen[:keep]
    tempered = np.exp((chosen - chosen[0]) / temperature)
    tempered /= tempered.sum()
    return int(candidates[rng.choice(len(candidates), p=tempered)])


def token_logprobs(logits: np.ndarray, token: int, top: int
                   ) -> tuple[float, tuple[tuple[int, float], ...]]:
    """The chosen token's log-probability and the ``top`` most likely tokens with theirs,
    from the raw logits (before penalty and temperature)."""
    row = logits.astype(np.float64, copy=False)
    peak = row.max()
    log_total = peak + np.log(np.exp(row - peak).sum())
    best = _best_first(logits, top) if top > 0 else np.empty(0, dtype=np.int64)
    return (float(row[token] - log_total),
            tuple((int(t), float(row[t] - log_total)) for t in best))
