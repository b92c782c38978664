"""The sampler and the logprobs it reports (pure; engine/sampling.py, token_logprobs.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferos.engine.api_requests import Sampling, parse_chat, parse_completion
from inferos.engine.completion_run import sampling_params
from inferos.engine.sampling import _best_first, next_token, token_logprobs
from inferos.engine.sampling_defaults import DEFAULTS
from inferos.engine.token_logprobs import LogprobTrail, _byte_of_char

VOCAB = 512


def _logits(seed: int) -> np.ndarray:
    # distinct values: no ties, so every order below is defined
    return np.random.default_rng(seed).permutation(VOCAB).astype(np.float32) / 37.0


def _draw(logits: np.ndarray, n: int, **kwargs: float) -> list[int]:
    rng = np.random.default_rng(3)
    params = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "repeat_penalty": 1.0, **kwargs}
    return [next_token(logits, history=[], rng=rng, **params) for _ in range(n)]  # type: ignore[arg-type]


@given(st.integers(0, 10_000), st.integers(1, VOCAB))
@settings(max_examples=50, deadline=None)
def test_the_partition_keeps_the_sorts_best_k_in_order(seed: int, k: int) -> None:
    logits = _logits(seed)
    assert list(_best_first(logits, k)) == list(np.argsort(-logits)[:k])


def test_greedy_and_the_filters_that_leave_only_the_best() -> None:
    logits = _logits(1)
    best = int(np.argmax(logits))
    assert _draw(logits, 20, temperature=0.0) == [best] * 20
    assert _draw(logits, 20, top_k=1) == [best] * 20
    # min_p 1: only tokens as likely as the best survive, i.e. the best
    assert _draw(logits, 20, min_p=1.0) == [best] * 20


def test_top_k_and_min_p_bound_what_can_be_drawn() -> None:
    logits = _logits(2)
    top5 = set(np.argsort(-logits)[:5].tolist())
    assert set(_draw(logits, 200, top_k=5, temperature=2.0)) <= top5
    probs = np.exp(logits - logits.max())
    allowed = set(np.flatnonzero(probs >= 0.5).tolist())
    drawn = set(_draw(logits, 300, min_p=0.5, temperature=2.0))
    assert drawn <= allowed and len(drawn) > 1


def test_a_seed_repeats_and_another_differs() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)  # uniform: every draw is the generator's

    def run(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [next_token(logits, temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0,
                           history=[], rng=rng) for _ in range(16)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_logprobs_are_the_raw_distributions() -> None:
    logits = _logits(4)
    token = 17
    chosen, top = token_logprobs(logits, token, 3)
    log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    assert chosen == pytest.approx(float(log_softmax[token]))
    assert [t for t, _ in top] == list(np.argsort(-logits)[:3])
    assert [v for _, v in top] == pytest.approx(sorted(log_softmax, reverse=True)[:3])
    assert token_logprobs(logits, token, 0)[1] == ()


def test_requests_get_llama_cpps_defaults_and_the_cap() -> None:
    chat = parse_chat({"messages": [{"role": "user", "content": "hi"}]})
    s = chat.sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.seed, s.repeat_penalty) == (
        DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p, DEFAULTS.min_p, DEFAULTS.seed,
        DEFAULTS.repeat_penalty)
    assert (0.0 < DEFAULTS.temperature, DEFAULTS.seed) == (True, 42)
    assert s.max_tokens is None and s.logprobs is None
    # no max_tokens: the default cap, unless the context ends first
    assert sampling_params(s, 10, 8192).max_tokens == DEFAULTS.max_tokens
    assert sampling_params(s, 8000, 8192).max_tokens == 192
    assert sampling_params(Sampling(max_tokens=5000), 10, 8192).max_tokens == 5000
    explicit = parse_chat({"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                           "seed": 9, "top_k": 0, "min_p": 0}).sampling
    assert (explicit.temperature, explicit.seed, explicit.top_k, explicit.min_p) == (0, 9, 0, 0)


def test_logprobs_fields_in_both_shapes() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert parse_chat({**chat, "logprobs": True}).sampling.logprobs == 0
    assert parse_chat({**chat, "logprobs": True, "top_logprobs": 4}).sampling.logprobs == 4
    assert parse_completion({"prompt": "a", "logprobs": 3}).sampling.logprobs == 3
    assert parse_completion({"prompt": "a", "echo": True}).echo


def test_a_trail_hands_over_each_token_once() -> None:
    from inferos.engine.sampling_params import TokenLogprob

    trail = LogprobTrail()
    trail.add(1, TokenLogprob(-0.5))
    trail.add(2, TokenLogprob(-1.5))
    assert [t for t, _ in trail.take()] == [1, 2]
    assert trail.take() == []
    trail.add(3, TokenLogprob(-0.1))
    assert [t for t, _ in trail.take()] == [3]


def test_the_byte_alphabet_covers_every_byte_once() -> None:
    table = _byte_of_char()
    assert sorted(table.values()) == list(range(256))
