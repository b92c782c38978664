"""Moving stored keys to other positions: the rotary shift that eviction needs.

The ONNX graph stores keys *after* rotary embedding, and derives positions from the
attention mask's length alone: a past of P tokens means the next token sits at P. When
tokens are cut out of the middle of the past (L3 eviction inside one context), every
kept key after the cut would otherwise carry the phase of its old, larger position,
and the newest tokens would look to the next query as if they came *after* it. Rotating
each kept key back by the number of tokens evicted before it gives it the phase of its
new position; relative distances among kept tokens then shrink exactly as StreamingLLM's
in-cache positions do.

Convention: Llama's (Hugging Face ``rotate_half``), which the ONNX Runtime GenAI builder
keeps for llama graphs: dimension ``i`` pairs with ``i + D/2`` and turns by
``position * base^(-2i/D)``. SmolLM2 uses ``base = 100000``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compacted_shift", "rotate_keys"]


def rotate_keys(keys: np.ndarray, shift: np.ndarray | int, base: float) -> np.ndarray:
    """``keys`` [H, T, D] moved by ``shift`` positions (per token [T], or one int).

    Exact inverse: ``rotate_keys(rotate_keys(k, s, b), -s, b) == k`` up to rounding.
    Returns a new array of the input dtype (computed in float64).
    """
    assert keys.ndim == 3 and keys.shape[2] % 2 == 0, keys.shape
    half = keys.shape[2] // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2 / keys.shape[2])
    shifts = np.broadcast_to(np.asarray(shift, dtype=np.float64), (keys.shape[1],))
    angle = shifts[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = np.cos(angle), np.sin(angle)
    k = keys.astype(np.float64)
    x1, x2 = k[..., :half], k[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(keys.dtype)


def compacted_shift(keep: np.ndarray) -> np.ndarray:
    """For a boolean ``keep`` mask over positions, each kept token's shift (<= 0).

    A kept token moves back by the number of evicted tokens before it.
    """
    evicted_before = np.cumsum(~keep) - (~keep)
    return -evicted_before[keep]
