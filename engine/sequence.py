"""One generation inside the batch scheduler: its row, its sampling state, its progress.

A ``Sequence`` is what ``BatchScheduler.submit`` takes and steps (engine/batch_scheduler.py).
It keeps everything that makes a row's output the same as it would be alone: its own
sampling parameters and random generator (seeded as requested), repeat-penalty history,
detokenizer, token budget and stop tokens. Stop *strings* are the API's business
(engine/completion_run.py), as before.

``accept(token)`` is the one place a generated token becomes an event: it appends it to the
history, emits a ``TokenEvent`` through ``sink`` and says whether the sequence ended. A
speculative verification (several tokens from one run) calls it once per token, in order,
so the random generator is drawn exactly as plain decoding draws it.

Lifecycle: waiting (``buffer`` None) -> prefilling (``position`` < prompt length) ->
decoding (``pending`` is the last emitted token, whose KV is written by the next step) ->
released (``released``; its row is back in the pool and ``on_release`` has been called).
Everything but ``cancelled`` is touched on the generation thread only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inferos.engine.context_eviction import ContextEvictor
from inferos.engine.detokenize import Detokenizer
from inferos.engine.kv_buffers import KvBuffer
from inferos.engine.sampling import next_token, token_logprobs
from inferos.engine.sampling_params import SamplingParams, TokenEvent, TokenLogprob

__all__ = ["SPEC_PROBATION", "Sequence"]

SPEC_PROBATION = 16  # drafted tokens before a low acceptance rate turns speculation off


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[TokenEvent], None]
    on_release: Callable[[BaseException | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    # set when admitted (a row taken)
    buffer: KvBuffer | None = None
    evictor: ContextEvictor | None = None
    reuse: int = 0
    limit: int = 0
    stop_ids: frozenset[int] = frozenset()
    detok: Detokenizer | None = None
    rng: np.random.Generator | None = None
    history: list[int] = field(default_factory=list)
    admitted_at: float | None = None
    first_at: float | None = None
    position: int = 0          # prompt tokens whose KV is in the row
    pending: int | None = None  # the last emitted token: its KV is the next step's to write
    produced: int = 0
    done: bool = False
    released: bool = False
    # prompt-lookup speculation
    speculating: bool = True
    drafted: int = 0
    accepted: int = 0
    verifications: int = 0
    _held: list[TokenEvent] | None = None
    _logprob: TokenLogprob | None = None  # the last sampled token's, when asked for

    @property
    def prefilled(self) -> bool:
        return self.buffer is not None and self.position >= len(self.prompt)

    @property
    def remaining(self) -> int:
        return self.limit - self.produced

    @property
    def queued_s(self) -> float:
        admitted = self.admitted_at if self.admitted_at is not None else time.perf_counter()
        return admitted - self.submitted_at

    def sample(self, logits: np.ndarray) -> int:
        assert self.rng is not None
        p = self.params
        token = next_token(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                           repeat_penalty=p.repeat_penalty, history=self.history,
                           rng=self.rng, min_p=p.min_p)
        if p.logprobs is not None:
            # accept(), which always follows, puts it on the token's event
            self._logprob = TokenLogprob(*token_logprobs(logits, token, p.logprobs))
        return token

    def accept(self, token: int) -> bool:
        """Emits ``token``; True when the sequence has ended with it (a stop token, or
        its token budget)."""
        assert self.detok is not None
        self.produced += 1
        self.history.append(token)
        first = self.produced == 1
        if first:
            self.first_at = time.perf_counter()
        cached = self.reuse if first else 0
        queued = self.queued_s if first else 0.0
        logprob, self._logprob = self._logprob, None
        if token in self.stop_ids:
            self._emit(TokenEvent(token, self.detok.flush(), "stop", cached, queued,
                                  logprob=logprob))
            return True
        text = self.detok.push(token)
        if self.produced >= self.limit:
            self._emit(TokenEvent(token, text + self.detok.flush(), "length", cached, queued,
                                  logprob=logprob))
            return True
        self._emit(TokenEvent(token, text, None, cached, queued, logprob=logprob))
        self.pending = token
        return False

    def _emit(self, event: TokenEvent) -> None:
        if event.finish_reason is not None:
            self.done = True
        if self._held is not None:
            self._held.append(event)
        else:
            self._send(event)

    def _send(self, event: TokenEvent) -> None:
        self.sink(TokenEvent(event.token_id, event.text, event.finish_reason,
                             event.cached_tokens, event.queued_s, self.drafted, self.accepted,
                             event.logprob))

    def hold(self) -> None:
        """Keep events until ``release_held``: a verification emits its tokens once its
        draft counts are recorded, so that they carry them."""
        self._held = []

    def release_held(self) -> None:
        held, self._held = self._held, None
        for event in held or ():
            self._send(event)

    def tokens_per_verification(self, overall_rate: float, proposal: int) -> float:
        """What a verification of ``proposal`` drafted tokens is expected to yield: the
        token it always gives plus the accepted ones, from this sequence's own record
        once it has one, else from the scheduler's ``overall_rate``."""
        if self.verifications >= 2:
            return 1.0 + self.accepted / self.verifications
        return 1.0 + overall_rate * proposal

    def record_draft(self, drafted: int, accepted: int, min_accept_rate: float) -> None:
        """Counts a verification; speculation stops for this sequence once, past its
        probation, its running acceptance is below ``min_accept_rate``."""
        self.drafted += drafted
        self.accepted += accepted
        self.verifications += 1
        if self.drafted >= SPEC_PROBATION and self.accepted < min_accept_rate * self.drafted:
            self.speculating = False
