"""What the batch scheduler's runs cost, measured as it goes, and the choices made from it.

``StepCosts`` keeps moving averages (seconds) of a batched decode step at each width, a
run's fixed cost (reading the weights once: a single-row decode step), a prompt token's
cost in a prefill chunk beyond that fixed cost, and a speculative verification. From them:

- ``chunk_size``: the prompt tokens that fit beside this step's decode within the
  time-per-token budget (engine/batch_scheduler.py, step 5). Each chunk is a run of its
  own and pays the fixed cost again (the graph refuses a prefill inside a batched run), so
  a small chunk prefills slowly: 16 tokens at 20 ms fixed and 1.5 ms a token run at 45% of
  a full chunk's speed. While other prompts wait behind the one prefilling, holding it to
  the budget would keep them out of the batch for longer than it saves the running
  streams (measured: 8 prompts of 1,024 tokens at once came out at x0.85 of serving them
  one at a time, with 1.6 rows a step), so then a chunk is at least the size that runs at
  ``QUEUED_EFFICIENCY`` of full speed, and the step is counted as over the budget;
- ``verify_alone``: how many of a batch's rows, best first by expected tokens per
  verification, to verify alone instead of batching them, if any raises the step's
  expected tokens per second, within a step time when one is given (the budget, less what
  a pending prefill chunk needs).

Nothing is assumed that was not measured: until a cost is known, prefill chunks are small
(so that they get measured) and no row of a batch is verified alone.
"""

from __future__ import annotations

__all__ = ["MIN_CHUNK", "PREFILL_CHUNK", "QUEUED_EFFICIENCY", "StepCosts"]

PREFILL_CHUNK = 256  # a 4k prompt's full logits would be 800 MB; chunks keep only the last
MIN_CHUNK = 16       # the smallest chunk: a long prompt always makes progress
# With prompts queued behind: the prompt work is at least this share of a chunk's run time.
QUEUED_EFFICIENCY = 0.8
_WEIGHT = 0.2


class _Ewma:
    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else \
            (1 - _WEIGHT) * self.value + _WEIGHT * sample


class StepCosts:
    def __init__(self) -> None:
        self._batched: dict[int, _Ewma] = {}
        self._fixed = _Ewma()
        self._prompt_token = _Ewma()
        self._verify = _Ewma()

    # -- measurements --------------------------------------------------------------------
    def batched_step(self, rows: int, seconds: float) -> None:
        self._batched.setdefault(rows, _Ewma()).add(seconds)

    def single_step(self, seconds: float) -> None:
        self._fixed.add(seconds)

    def verification(self, seconds: float) -> None:
        self._verify.add(seconds)

    def chunk(self, tokens: int, seconds: float, step_s: float) -> None:
        if tokens >= MIN_CHUNK:
            self._prompt_token.add(max(seconds - self.fixed_s(step_s), 0.0) / tokens)

    # -- estimates -------------------------------------------------------------------------
    def fixed_s(self, step_s: float) -> float:
        """A run's fixed cost; until measured, this step's decode time (at least that)."""
        fixed = self._fixed.value
        return fixed if fixed is not None else step_s

    def chunk_size(self, full: int, decoding: int, budget_s: float, step_s: float,
                   queued: bool = False) -> int:
        """Prompt tokens for the next chunk: ``full`` when nothing decodes; otherwise
        what fits in ``budget_s`` beside this step's ``step_s`` of decoding, and with
        prompts ``queued`` behind, at least the chunk that runs at QUEUED_EFFICIENCY."""
        if decoding == 0:
            return full
        per_token = self._prompt_token.value
        if per_token is None or per_token <= 0:
            return min(full, 2 * MIN_CHUNK)  # not measured yet: small, then measured
        fixed = self.fixed_s(step_s)
        fits = int((budget_s - step_s - fixed) / per_token)
        if queued:
            fits = max(fits, self.efficient_chunk(per_token, fixed))
        return max(MIN_CHUNK, min(full, fits))

    @staticmethod
    def efficient_chunk(per_token: float, fixed: float) -> int:
        """The smallest chunk whose prompt work is QUEUED_EFFICIENCY of its run."""
        return int(fixed * QUEUED_EFFICIENCY / ((1 - QUEUED_EFFICIENCY) * per_token)) + 1

    def chunk_s(self, tokens: int, step_s: float) -> float | None:
        """What a chunk of ``tokens`` is expected to cost (None: not measured yet)."""
        per_token = self._prompt_token.value
        if per_token is None:
            return None
        return self.fixed_s(step_s) + tokens * per_token

    def _rows_s(self, rows: int, fallback: float) -> float:
        """A decode step's cost for ``rows`` rows (``fallback``: a wider step's)."""
        if rows == 0:
            return 0.0
        measured = self._fixed if rows == 1 else self._batched.get(rows)
        return measured.value if measured is not None and measured.value is not None \
            else fallback

    def verify_alone(self, rows: int, expected: list[float],
                     max_step_s: float | None = None) -> int:
        """Of ``rows`` decoding rows, how many to verify alone: the best prefix of
        ``expected`` (tokens per verification, best first) by tokens per second, 0 when
        batching them all is as good or the costs are not measured yet. With
        ``max_step_s``, only a choice whose step is expected within it (a step over it
        is the streams' time per token over the budget)."""
        batched = self._batched.get(rows)
        verify_s = self._verify.value
        if batched is None or batched.value is None or verify_s is None:
            return 0
        best_rate, best = rows / batched.value, 0
        tokens = 0.0
        for k, tokens_k in enumerate(expected, start=1):
            tokens += tokens_k
            left = rows - k
            step = k * verify_s + self._rows_s(left, batched.value)
            if max_step_s is not None and step > max(max_step_s, batched.value):
                break
            rate = (tokens + left) / step
            if rate > best_rate:
                best_rate, best = rate, k
        return best
