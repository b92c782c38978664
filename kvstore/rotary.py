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

__all__ = ["compacted_shift", "frequencies", "measured_frequencies", "rotate_keys"]


def frequencies(base: float, head_dim: int) -> np.ndarray:
    """Each dimension pair's angle per position: ``base^(-2i/D)``, [D/2] float64."""
    return np.asarray(base ** (-np.arange(head_dim // 2, dtype=np.float64) * 2 / head_dim))


def measured_frequencies(at_0: np.ndarray, at_1: np.ndarray) -> np.ndarray:
    """The angles per position of a graph that applies rotary itself, from the keys of
    one token at positions 0 and 1 (``[..., D]`` each; keys of layer 0 depend on nothing
    else, so they differ by the rotation alone). Pairs are weighted by their magnitude,
    over every leading index (heads), so a near-zero pair does not spoil its estimate.
    """
    half = at_0.shape[-1] // 2
    z0 = (at_0[..., :half] + 1j * at_0[..., half:]).astype(np.complex128).reshape(-1, half)
    z1 = (at_1[..., :half] + 1j * at_1[..., half:]).astype(np.complex128).reshape(-1, half)
    turn = (z1 * np.conj(z0)).sum(axis=0)  # |z0|^2-weighted mean rotation per pair
    return np.asarray(np.angle(turn))


def rotate_keys(keys: np.ndarray, shift: np.ndarray | int, base: float | None = None, *,
                inv_freq: np.ndarray | None = None) -> np.ndarray:
    """``keys`` [H, T, D] moved by ``shift`` positions (per token [T], or one int).

    The rotation per pair is ``frequencies(base, D)``, or ``inv_freq`` when given (as
    ``measured_frequencies`` finds it). Exact inverse:
    ``rotate_keys(rotate_keys(k, s, b), -s, b) == k`` up to rounding. Returns a new array
    of the input dtype (computed in float64).
    """
    assert keys.ndim == 3 and keys.shape[2] % 2 == 0, keys.shape
    half = keys.shape[2] // 2
    if inv_freq is None:
        if base is None:
            raise ValueError("rotate_keys needs a rotary base or the frequencies")
        inv_freq = frequencies(base, keys.shape[2])
    assert inv_freq.shape == (half,), inv_freq.shape
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
