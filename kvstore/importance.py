"""Importance of a KV chunk: I = alpha*attn + beta*freq + gamma*sem - eta*age.

Every term lies in [0, 1] and comes from something the engine can observe:

attn  The ONNX graph (GroupQueryAttention) returns no attention weights, so the proxy is
      the softmax of *probe* vectors against the stored keys, scaled by 1/sqrt(head_dim)
      like the real logits. The probes are the last few keys the engine wrote: a key and
      the query of the same token are projections of the same hidden state with the same
      rotary phase, so recent keys are the closest observable stand-in for the queries
      that will read the cache next (a query head of a GQA group shares its KV head's
      keys). A chunk's term is its softmax mass relative to a uniform share,
      r = mass * T_total / T_chunk, squashed as r / (1 + r): 0.5 for an average chunk.
freq  Reuse count n (prefix hits that read the chunk), saturating: n / (n + freq_half).
sem   Cosine similarity between the chunk's mean key and the recent window's mean key,
      per KV head, averaged, mapped from [-1, 1] to [0, 1]. Keys are post-rotary (that is
      what the graph stores); the low-frequency rotary pairs barely turn over a few
      thousand tokens, so the similarity still tracks content.
age   Time since last access, as 1 - 2^(-age / half_life): 0 when fresh, -> 1 when stale.

With the default weights (alpha + beta + gamma = 1) I lies in [-eta, 1], on the same scale
as the config's level thresholds (0.7 / 0.5 / 0.3): a fresh chunk of average attention,
neutral similarity and no reuse scores 0.4 (-> INT4); two reuses lift it to INT8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inferos.errors import ConfigError

__all__ = [
    "ImportanceTerms",
    "ImportanceWeights",
    "age_term",
    "attention_proxy",
    "frequency_term",
    "semantic_proxies",
    "semantic_proxy",
]


@dataclass(frozen=True)
class ImportanceWeights:
    """Weights of the four terms and the two scales that squash counts and ages."""

    alpha: float = 0.5
    beta: float = 0.2
    gamma: float = 0.3
    eta: float = 0.3
    freq_half: float = 2.0
    age_half_life_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "eta"):
            if getattr(self, name) < 0:
                raise ConfigError("must not be negative", key=f"importance.{name}")
        for name in ("freq_half", "age_half_life_s"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", key=f"importance.{name}")


@dataclass(frozen=True)
class ImportanceTerms:
    """The four observed terms of one chunk, each in [0, 1]."""

    attn: float
    freq: float
    sem: float
    age: float

    def score(self, w: ImportanceWeights) -> float:
        return w.alpha * self.attn + w.beta * self.freq + w.gamma * self.sem - w.eta * self.age


def attention_proxy(
    probes: np.ndarray, keys: np.ndarray, token_ranges: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Relative attention of each ``[start, stop)`` range of ``keys`` [H, T, D].

    ``probes`` [H, P, D] stand in for queries (see the module docstring). Returns one
    value in [0, 1) per range, 0.5 when the range gets exactly its uniform share.
    """
    assert probes.ndim == 3 and keys.ndim == 3, (probes.shape, keys.shape)
    assert probes.shape[0] == keys.shape[0] and probes.shape[2] == keys.shape[2]
    total = keys.shape[1]
    logits = np.einsum("hpd,htd->hpt", probes.astype(np.float64), keys.astype(np.float64))
    logits /= np.sqrt(keys.shape[2])
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    mass = probs.mean(axis=(0, 1))
    out = np.empty(len(token_ranges))
    for i, (start, stop) in enumerate(token_ranges):
        assert 0 <= start < stop <= total, (start, stop, total)
        relative = float(mass[start:stop].sum()) * total / (stop - start)
        out[i] = relative / (1.0 + relative)
    return out


def semantic_proxy(chunk_keys: np.ndarray, window_keys: np.ndarray) -> float:
    """Similarity in [0, 1] of a chunk's mean key to the recent window's, per head."""
    assert chunk_keys.ndim == 3 and window_keys.ndim == 3
    a = chunk_keys.astype(np.float64).mean(axis=1)
    b = window_keys.astype(np.float64).mean(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("hd,hd->h", a, b)
    # A zero mean key has no direction: count it as neutral (cos 0) rather than divide by 0.
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return float((1.0 + np.clip(cos, -1.0, 1.0).mean()) / 2.0)


def semantic_proxies(keys: np.ndarray, token_ranges: Sequence[tuple[int, int]],
                     window_keys: np.ndarray) -> np.ndarray:
    """``semantic_proxy`` of every ``[start, stop)`` range of ``keys`` [H, T, D] at once
    (prefix sums: one pass over the keys whatever the number of ranges)."""
    assert keys.ndim == 3 and window_keys.ndim == 3
    if not token_ranges:
        return np.zeros(0)
    starts = np.array([a for a, _ in token_ranges])
    stops = np.array([b for _, b in token_ranges])
    assert (0 <= starts).all() and (starts < stops).all() and stops.max() <= keys.shape[1]
    sums = np.zeros((keys.shape[0], keys.shape[1] + 1, keys.shape[2]))
    np.cumsum(keys.astype(np.float64), axis=1, out=sums[:, 1:])
    means = (sums[:, stops] - sums[:, starts]) / (stops - starts)[None, :, None]  # [H, R, D]
    b = window_keys.astype(np.float64).mean(axis=1)  # [H, D]
    norms = np.linalg.norm(means, axis=2) * np.linalg.norm(b, axis=1)[:, None]
    dots = np.einsum("hrd,hd->hr", means, b)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.asarray((1.0 + np.clip(cos, -1.0, 1.0).mean(axis=0)) / 2.0)


def frequency_term(reuse_count: int, w: ImportanceWeights) -> float:
    """Saturating reuse count: 0 never reused, 0.5 at ``freq_half`` reuses."""
    n = max(reuse_count, 0)
    return n / (n + w.freq_half)


def age_term(age_ns: int, w: ImportanceWeights) -> float:
    """0 for a chunk touched now, 0.5 after one half-life, -> 1 as it goes stale."""
    age_s = max(age_ns, 0) / 1e9
    return 1.0 - 2.0 ** (-age_s / w.age_half_life_s)
