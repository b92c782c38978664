"""Continuous batching with a prefill/decode scheduler and prompt-lookup speculation.

One ``BatchScheduler`` per loaded model steps every sequence on the model's one generation
thread (``run_until_idle``, started by ``ModelSlot`` when a request arrives; ``step`` for
callers that drive it themselves, as ``LoadedModel.generate`` does). Each step:

1. follows the live policy (``LoadedModel.follow_policy``: parked KV re-leveled at once);
2. releases sequences that were cancelled (their client went away, a stop string was found);
3. admits waiting sequences, in order, while fewer than ``scheduler.max_batch`` hold a row
   (each takes a row of the batch buffer, with its prefix restored: engine/kv_buffers.py);
4. runs one decode step for the sequences that are decoding: several rows together in one
   run (right padding; a row in ``[0, width)`` that is not decoding keeps a mask sum of at
   least 1 and is written only past what it holds), or, for a sequence decoding alone,
   a speculative verification of a prompt-lookup draft on its own row;
5. runs one prefill chunk of the oldest sequence still prefilling. The graph refuses B > 1
   with S > 1 on a past, so a prompt is prefilled alone into its row; while others decode,
   the chunk is sized so that their time per output token (this step's decode plus this
   chunk) stays within ``scheduler.tpot_budget_ms``, from measured costs: a fixed cost per
   run and a cost per prompt token, each a moving average. With nothing decoding, chunks
   are full size; with other prompts admitted and waiting for their prefill, a chunk is at
   least the size that prefills at 80% of full speed, over the budget if need be (the
   costs and why: engine/step_costs.py). The decode step keeps room in the budget for the
   smallest chunk when one is pending. ``stats()["rounds"]`` counts the rounds over the
   budget. A sequence whose prefill ends joins the next decode step.

Speculation and batching: a verification runs one row alone (the graph's constraint), so
with several rows decoding, each row verified in turn costs a run of its own where one
batched run serves them all. Measured here (fp32, 2 cores, 300-token rows): four
verifications of 5-9 tokens cost 2.2-2.3 times one batched step of the four rows, so a row
gains from speculating inside a batch only when its verifications yield well over one
accepted draft token each, as copying and editing do and free text does not. The
scheduler therefore decides each step from measured costs (the batched step at each
width, a verification, a run's fixed cost; moving averages) and each row's own record of
tokens per verification (until it has one, the overall acceptance rate times its draft):
it verifies alone the rows, best first, for which that raises the step's expected tokens
per second, and batches the rest. A sequence decoding alone verifies whenever it has a
draft. Until both costs are measured, rows in a batch do not speculate.

At temperature 0 a verified draft gives the same tokens as plain decoding; at temperature
> 0 each position's token is sampled from the target distribution with the sequence's own
generator, and a draft token is kept only when it equals that sample: the generator is
drawn exactly as plain decoding draws it, so the output is the plain output, seed for seed.
Rejected tokens roll back by shortening the row's token list (the mask). A sequence whose
running acceptance falls below ``quality.min_accept_rate`` stops speculating.

The scheduler never raises into the generation thread's loop for one sequence's fault: a
prompt that does not fit, or a failed run, ends the sequences concerned with that error
(``on_release``) and the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from inferos.engine.detokenize import Detokenizer
from inferos.engine.memory_budget import release_free_heap
from inferos.engine.prompt_lookup import draft
from inferos.engine.sampling_params import SamplingParams, TokenEvent
from inferos.engine.sequence import Sequence
from inferos.engine.step_costs import MIN_CHUNK, PREFILL_CHUNK, StepCosts

if TYPE_CHECKING:
    from inferos.engine.runtime import LoadedModel

__all__ = ["BatchScheduler"]

log = logging.getLogger(__name__)

# Until anything is drafted, the acceptance measured on grounded prompts with fp32 weights
# (RUNTIME_FACTS.md: 39-56%) stands in.
PRIOR_ACCEPT_RATE = 0.5
_RECENT_WAITS = 256


class BatchScheduler:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._prefilling: deque[Sequence] = deque()
        self._decoding: list[Sequence] = []
        self._running = False
        self.costs = StepCosts()
        # counters, as stats() reports them
        self.decode_steps = 0
        self.decode_rows = 0        # sum of rows over decode steps: occupancy
        self.steps_by_rows: dict[int, int] = {}  # decode runs by the rows they ran
        # rounds (steps with anything decoding): how many ran a prefill chunk too, and
        # how many took longer than the time-per-token budget
        self.decode_rounds = 0
        self.rounds_beside_prefill = 0
        self.rounds_over_budget = 0
        self.batched_steps = 0
        self.prefill_chunks = 0
        self.prefill_chunk_tokens = 0
        self.last_chunk = 0
        self.verify_runs = 0
        self.verified_in_batch = 0  # verifications of a row while others decoded
        self.drafted = 0
        self.accepted = 0
        self.speculation_stopped = 0
        self.admitted = 0
        # heap pages given back after steps that ended a generation (release_free_heap)
        self._trim_due = False
        self.heap_trims = 0
        self.heap_trim_s = 0.0
        self._waits: deque[float] = deque(maxlen=_RECENT_WAITS)

    # -- submission (any thread) -------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams,
               sink: Callable[[TokenEvent], None],
               on_release: Callable[[BaseException | None], None], *,
               runner: bool = True) -> tuple[Sequence, bool]:
        """Queues a generation; returns it and whether the caller must start
        ``run_until_idle`` on the generation thread (it is not running). ``runner``
        False: the caller steps the scheduler itself."""
        sequence = Sequence(list(prompt), params, sink, on_release)
        with self._lock:
            self._waiting.append(sequence)
            start = runner and not self._running
            if start:
                self._running = True
        return sequence, start

    def run_until_idle(self) -> None:
        """Generation thread: steps until no sequence is left."""
        while True:
            with self._lock:
                if not self._has_work():
                    self._running = False
                    return
            try:
                self.step()
            except BaseException:
                log.exception("the batch scheduler's step failed; ending its sequences")
                self._fail_all(RuntimeError("the engine's scheduler failed"))

    def _has_work(self) -> bool:
        return bool(self._waiting or self._prefilling or self._decoding)

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    def active(self) -> int:
        with self._lock:
            return len(self._prefilling) + len(self._decoding)

    # -- one step (generation thread) -----------------------------------------------
    def step(self) -> None:
        model = self.model
        policy = model.follow_policy()
        self._reap()
        self._admit(policy.max_batch)
        decoding = len(self._decoding)
        budget_s = policy.tpot_budget_ms / 1000.0
        step_s = 0.0
        if decoding:
            # The decode step leaves room within the budget for the smallest prefill chunk
            # when a prompt is waiting for one.
            reserve = self.costs.chunk_s(MIN_CHUNK, 0.0) if self._prefilling else 0.0
            started = time.perf_counter()
            self._decode(policy.speculation, policy.max_draft, policy.min_accept_rate,
                         budget_s - (reserve or 0.0))
            step_s = time.perf_counter() - started
            model.counters.decode_s += step_s
        chunk_s = 0.0
        if self._prefilling:
            started = time.perf_counter()
            self._prefill_chunk(self._prefilling[0], decoding, budget_s, step_s)
            chunk_s = time.perf_counter() - started
        if decoding:
            self.decode_rounds += 1
            if chunk_s:
                self.rounds_beside_prefill += 1
            if step_s + chunk_s > budget_s:
                self.rounds_over_budget += 1
        if self._trim_due:
            self._trim_heap()

    def _trim_heap(self) -> None:
        """After a step that ended a generation (its client has its last event): the heap
        pages malloc holds free go back to the kernel. Without it the engine's RSS kept
        growing after its budget was reached (engine/memory_budget.py,
        ``release_free_heap``, has the evidence). At most once a step, and only in a step
        that ended one: never per token (~2.3 ms a trim, measured)."""
        self._trim_due = False
        started = time.perf_counter()
        if release_free_heap():
            self.heap_trims += 1
            self.heap_trim_s += time.perf_counter() - started

    def _reap(self) -> None:
        for sequence in [*self._prefilling, *self._decoding]:
            if sequence.cancelled.is_set():
                self._release(sequence, None)
        with self._lock:
            gone = [s for s in self._waiting if s.cancelled.is_set()]
            for sequence in gone:
                self._waiting.remove(sequence)
        for sequence in gone:
            self._release(sequence, None)

    def _admit(self, max_batch: int) -> None:
        model = self.model
        while len(self._prefilling) + len(self._decoding) < max_batch \
                and model.pool.free_rows() > 0:
            with self._lock:
                if not self._waiting:
                    return
                sequence = self._waiting.popleft()
            try:
                self._start(sequence)
            except BaseException as exc:
                self._release(sequence, exc)
                continue
            self._prefilling.append(sequence)

    def _start(self, sequence: Sequence) -> None:
        model = self.model
        sequence.evictor = model.evicting(model.policy)
        prompt = sequence.prompt
        model.check(prompt, sequence.evictor is not None)  # the policy may have changed
        # At least the last prompt token runs again: its logits give the first token.
        reusing = model.options.prefix_cache and sequence.params.cache_prompt
        limit = len(prompt) - 1 if reusing else 0
        buffer = model.pool.take(prompt, limit)
        sequence.buffer = buffer
        sequence.admitted_at = time.perf_counter()
        self._waits.append(sequence.queued_s)
        self.admitted += 1
        reuse = min(buffer.common_prefix(prompt), limit) if reusing else 0
        buffer.keep_prefix(reuse)  # the rest of what it held is overwritten
        sequence.reuse = sequence.position = reuse
        params = sequence.params
        sequence.limit = params.max_tokens if sequence.evictor is not None else \
            min(params.max_tokens, model.ctx_size - len(prompt))
        sequence.stop_ids = model.stop_ids
        sequence.detok = Detokenizer(model.tokenizer, skip=model.stop_ids)
        sequence.rng = np.random.default_rng(params.seed)
        sequence.history = list(prompt)
        counters = model.counters
        counters.generations += 1
        counters.prompt_tokens += len(prompt)
        counters.reused_tokens += reuse
        if reuse > 0:
            counters.prefix_hits += 1
        else:
            counters.prefix_misses += 1

    def _release(self, sequence: Sequence, error: BaseException | None) -> None:
        """Ends ``sequence``: its row parks its KV and goes back to the pool at once."""
        if sequence.released:
            return
        sequence.released = True
        if sequence in self._prefilling:
            self._prefilling.remove(sequence)
        if sequence in self._decoding:
            self._decoding.remove(sequence)
        buffer, sequence.buffer = sequence.buffer, None
        try:
            if buffer is not None:
                try:
                    self.model.follow_policy()
                finally:
                    # buffer.tokens are exactly the positions whose KV was written
                    self.model.pool.give_back(buffer)
        except BaseException as exc:
            log.error("parking a finished row's KV failed", exc_info=exc)
            error = error or exc
        finally:
            self._trim_due = True
            sequence.on_release(error)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for sequence in [*self._prefilling, *self._decoding, *waiting]:
            self._release(sequence, error)

    # -- prefill -------------------------------------------------------------------------
    def _prefill_chunk(self, sequence: Sequence, decoding: int, budget_s: float,
                       step_s: float) -> None:
        model = self.model
        buffer = sequence.buffer
        assert buffer is not None
        full = PREFILL_CHUNK if sequence.evictor is None else \
            min(PREFILL_CHUNK, model.ctx_size // 4)
        # Others admitted and waiting for their prefill: holding this one to the budget
        # keeps them out of the batch longer (engine/step_costs.py).
        size = self.costs.chunk_size(full, decoding, budget_s, step_s,
                                     queued=len(self._prefilling) > 1)
        chunk = sequence.prompt[sequence.position:sequence.position + size]
        started = time.perf_counter()
        try:
            model.ensure_room(buffer, len(chunk), sequence.evictor)
            logits = model.run_row(buffer, chunk, len(buffer.tokens))
        except BaseException as exc:
            self._release(sequence, exc)
            return
        elapsed = time.perf_counter() - started
        buffer.tokens.extend(chunk)
        sequence.position += len(chunk)
        self.prefill_chunks += 1
        self.prefill_chunk_tokens += len(chunk)
        self.last_chunk = len(chunk)
        self.costs.chunk(len(chunk), elapsed, step_s)
        if not sequence.prefilled:
            return
        model.counters.prefill_s += time.perf_counter() - (sequence.admitted_at or started)
        self._prefilling.popleft()
        if self._emit(sequence, [sequence.sample(logits)]):
            self._decoding.append(sequence)

    # -- decode --------------------------------------------------------------------------
    def _emit(self, sequence: Sequence, tokens: list[int]) -> bool:
        """Accepts ``tokens`` in order; True while the sequence goes on."""
        self.model.counters.generated_tokens += len(tokens)
        for token in tokens:
            if sequence.accept(token):
                self._release(sequence, None)
                return False
        return True

    def _decode(self, speculation: bool, max_draft: int, min_accept_rate: float,
                max_step_s: float) -> None:
        rows = list(self._decoding)
        if len(rows) == 1:
            sequence = rows[0]
            proposal = self._draft(sequence, max_draft) \
                if speculation and sequence.speculating else []
            if proposal:
                self._verify(sequence, proposal, min_accept_rate)
            else:
                self._single(sequence)
            return
        alone = self._plan(rows, max_draft, max_step_s) if speculation else []
        self.verified_in_batch += len(alone)
        for sequence, proposal in alone:
            self._verify(sequence, proposal, min_accept_rate)
        chosen = {id(sequence) for sequence, _ in alone}
        rest = [s for s in rows if id(s) not in chosen and not s.released]
        if len(rest) == 1:
            self._single(rest[0])
        elif rest:
            self._batched(rest)

    def _plan(self, rows: list[Sequence], max_draft: int, max_step_s: float
              ) -> list[tuple[Sequence, list[int]]]:
        """The rows to verify alone this step: the best of those with a draft, by expected
        tokens per verification, as many as raise the step's measured tokens per second
        and keep it within ``max_step_s``."""
        overall = self.accepted / self.drafted if self.drafted else PRIOR_ACCEPT_RATE
        candidates: list[tuple[float, Sequence, list[int]]] = []
        for sequence in rows:
            proposal = self._draft(sequence, max_draft) if sequence.speculating else []
            if proposal:
                candidates.append((sequence.tokens_per_verification(overall, len(proposal)),
                                   sequence, proposal))
        candidates.sort(key=lambda c: -c[0])
        best = self.costs.verify_alone(len(rows), [c[0] for c in candidates], max_step_s)
        return [(sequence, proposal) for _, sequence, proposal in candidates[:best]]

    def _draft(self, sequence: Sequence, max_draft: int) -> list[int]:
        buffer = sequence.buffer
        assert buffer is not None
        # room for the pending token and the draft, and no more than may still be emitted
        room = sequence.remaining - 1
        if sequence.evictor is None:
            room = min(room, self.model.ctx_size - len(buffer.tokens) - 1)
        if room <= 0:
            return []
        return draft(sequence.history, min(max_draft, room))

    def _single(self, sequence: Sequence) -> None:
        buffer = sequence.buffer
        assert buffer is not None and sequence.pending is not None
        started = time.perf_counter()
        try:
            self.model.ensure_room(buffer, 1, sequence.evictor)
            logits = self.model.run_row(buffer, [sequence.pending], len(buffer.tokens))
        except BaseException as exc:
            self._release(sequence, exc)
            return
        self.costs.single_step(time.perf_counter() - started)
        self._count_step(1, batched=False)
        buffer.tokens.append(sequence.pending)
        self._emit(sequence, [sequence.sample(logits)])

    def _verify(self, sequence: Sequence, proposal: list[int], min_accept_rate: float) -> None:
        buffer = sequence.buffer
        assert buffer is not None and sequence.pending is not None
        ids = [sequence.pending, *proposal]
        started = time.perf_counter()
        try:
            self.model.ensure_room(buffer, len(ids), sequence.evictor)
            base = len(buffer.tokens)
            logits = self.model.run_row(buffer, ids, base, all_logits=True)
        except BaseException as exc:
            self._release(sequence, exc)
            return
        self.costs.verification(time.perf_counter() - started)
        self.verify_runs += 1
        self._count_step(1, batched=False)
        buffer.tokens.extend(ids)
        # Position by position: sample the target's token; a draft token stands only if it
        # is what was sampled. The row keeps the KV of what plain decoding would have run.
        kept = 0
        finished = False
        sequence.hold()
        for position in range(len(ids)):
            token = sequence.sample(logits[position])
            self.model.counters.generated_tokens += 1
            finished = sequence.accept(token)
            if finished or position >= len(proposal) or token != proposal[position]:
                del buffer.tokens[base + position + 1:]
                break
            kept += 1
        was_speculating = sequence.speculating
        sequence.record_draft(len(proposal), kept, min_accept_rate)
        if was_speculating and not sequence.speculating:
            self.speculation_stopped += 1
        self.drafted += len(proposal)
        self.accepted += kept
        sequence.release_held()
        if finished:
            self._release(sequence, None)

    def _batched(self, rows: list[Sequence]) -> None:
        model = self.model
        try:
            for sequence in rows:
                assert sequence.buffer is not None
                model.ensure_room(sequence.buffer, 1, sequence.evictor)
        except BaseException as exc:
            for sequence in rows:
                self._release(sequence, exc)
            return
        by_row = {s.buffer.row: s for s in rows if s.buffer is not None}
        width = max(by_row) + 1
        lens = [0] * width
        inputs = [0] * width
        for row, sequence in by_row.items():
            assert sequence.buffer is not None and sequence.pending is not None
            lens[row] = len(sequence.buffer.tokens)
            inputs[row] = sequence.pending
        active_width = max(lens[row] for row in by_row) + 1
        self._pad(width, by_row, lens, active_width)
        started = time.perf_counter()
        try:
            logits = model.run_rows(inputs, lens)
        except BaseException as exc:
            for sequence in rows:
                self._release(sequence, exc)
            return
        elapsed = time.perf_counter() - started
        self.costs.batched_step(len(rows), elapsed)
        self._count_step(len(rows), batched=True)
        for row, sequence in by_row.items():
            assert sequence.buffer is not None and sequence.pending is not None
            sequence.buffer.tokens.append(sequence.pending)
            self._emit(sequence, [sequence.sample(logits[row])])

    def _pad(self, width: int, by_row: dict[int, Sequence], lens: list[int],
             active_width: int) -> None:
        """Mask sums of the rows in ``[0, width)`` that are not decoding: each writes one
        token's KV at its mask sum - 1, so that position must be one it does not need."""
        # Rows that are prefilling, or decoding but verified alone this step: one past
        # what they hold, which their next run writes over (it is never past the
        # context: a decoding row has room for its pending token, a prompt for one more).
        busy = {s.buffer.row: s.buffer for s in [*self._prefilling, *self._decoding]
                if s.buffer is not None}
        free = {b.row: b for b in self.model.pool.free_buffers()}
        for row in range(width):
            if row in by_row:
                continue
            if row in busy:
                lens[row] = len(busy[row].tokens)
            elif row in free:
                buffer = free[row]
                keep = min(len(buffer.exact_tokens), active_width - 1)
                buffer.keep_prefix(keep)
                lens[row] = keep
            else:
                raise AssertionError(f"row {row} is neither in use nor free")

    def _count_step(self, rows: int, *, batched: bool) -> None:
        """Counts one decode run (a step that verifies rows alone counts each of its runs)."""
        self.decode_steps += 1
        self.decode_rows += rows
        self.steps_by_rows[rows] = self.steps_by_rows.get(rows, 0) + 1
        if batched:
            self.batched_steps += 1

    # -- report -------------------------------------------------------------------------
    def stats(self, max_batch: int, max_queue: int) -> dict[str, Any]:
        with self._lock:
            waiting = len(self._waiting)
        waits = sorted(self._waits)
        occupancy = self.decode_rows / self.decode_steps if self.decode_steps else None
        return {
            "max_batch": max_batch, "max_queue": max_queue,
            "rows": self.model.pool.capacity,
            "decoding": len(self._decoding), "prefilling": len(self._prefilling),
            "queue_depth": waiting,
            "admitted": self.admitted,
            "queue_wait_ms": {
                "p50": round(waits[len(waits) // 2] * 1000.0, 3) if waits else None,
                "max": round(waits[-1] * 1000.0, 3) if waits else None,
                "window": len(waits)},
            "decode_steps": self.decode_steps, "batched_steps": self.batched_steps,
            "decode_rows": self.decode_rows,
            "steps_by_rows": {str(k): v for k, v in sorted(self.steps_by_rows.items())},
            "batch_occupancy": round(occupancy, 3) if occupancy is not None else None,
            "rounds": {"decoding": self.decode_rounds,
                       "beside_prefill": self.rounds_beside_prefill,
                       "over_budget": self.rounds_over_budget},
            "prefill_chunks": self.prefill_chunks,
            "heap_trims": self.heap_trims,
            "heap_trim_seconds": round(self.heap_trim_s, 3),
            "prefill_chunk_tokens": self.prefill_chunk_tokens,
            "last_prefill_chunk": self.last_chunk,
            "speculation": {
                "verify_runs": self.verify_runs,
                "verified_in_batch": self.verified_in_batch, "drafted": self.drafted,
                "accepted": self.accepted,
                "accept_rate": round(self.accepted / self.drafted, 4) if self.drafted
                else None,
                "sequences_stopped": self.speculation_stopped},
        }
