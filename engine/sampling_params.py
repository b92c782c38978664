"""What a generation is asked for (``SamplingParams``) and what it yields (``TokenEvent``).

Plain values shared by the core (engine/runtime.py), the batch scheduler and the server.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SamplingParams", "TokenEvent", "TokenLogprob"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repeat_penalty: float = 1.0
    min_p: float = 0.0
    # None: no log-probabilities; n >= 0: the chosen token's, and the n most likely ones'
    logprobs: int | None = None
    # llama.cpp's cache_prompt: False computes the whole prompt afresh. A prefix restored
    # from parked KV (float16, or lower under the kvstore's policy) gives logits a little
    # off a cold run's, so a sampled continuation can part from it after some tokens.
    cache_prompt: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the ``top`` alternatives
    (token id, log-probability), most likely first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. ``finish_reason`` is set on the last one ("stop": an end-of-turn
    token, whose text is empty; "length": max_tokens or the context's end). On the first
    event, ``cached_tokens`` are the prompt tokens reused from KV and ``queued_s`` the time
    the request waited for a batch row; ``drafted``/``accepted`` count the sequence's
    speculative tokens so far (llama.cpp's ``draft_n``/``draft_n_accepted``)."""

    token_id: int
    text: str
    finish_reason: str | None = None
    cached_tokens: int = 0
    queued_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    logprob: TokenLogprob | None = None
