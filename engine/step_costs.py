"""What the batch scheduler's runs cost, measured as it goes, and the choices made from it.

``StepCosts`` keeps moving averages (seconds) of a batched decode step at each width, a
run's fixed cost (reading the weights once: a single-row decode step), a prompt token's
cost in a prefill chunk beyond that fixed cost, and a speculative verification. From them:

- ``chunk_size``: the prompt tokens that fit beside this step's decode within the
  time-per-token budget (engine/batch_scheduler.py, step 5);
- ``verify_alone``: how many of a batch's rows, best first by expected tokens per
  verification, to verify alone instead of batching them, if any raises the step's
  expected tokens per second.

Nothing is assumed that was not measured: until a cost is known, prefill chunks are small
(so that they get measured) and no row of a batch is verified alone.
"""

from __future__ import annotations

__all__ = ["MIN_CHUNK", "PREFILL_CHUNK", "StepCosts"]

PREFILL_CHUNK = 256  # a 4k prompt's full logits would be 800 MB; chunks keep only the last
MIN_CHUNK = 16       # the smallest chunk: a long prompt always makes progress
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

    def chunk_size(self, full: int, decoding: int, budget_s: float, step_s: float) -> int:
        """Prompt tokens for the next chunk: ``full`` when nothing decodes; otherwise
        what fits in ``budget_s`` beside this step's ``step_s`` of decoding."""
        if decoding == 0:
            return full
        per_token = self._prompt_token.value
        if per_token is None or per_token <= 0:
            return min(full, 2 * MIN_CHUNK)  # not measured yet: small, then measured
        room = budget_s - step_s - self.fixed_s(step_s)
        return max(MIN_CHUNK, min(full, int(room / per_token)))

    def _rows_s(self, rows: int, fallback: float) -> float:
        """A decode step's cost for ``rows`` rows (``fallback``: a wider step's)."""
        if rows == 0:
            return 0.0
        measured = self._fixed if rows == 1 else self._batched.get(rows)
        return measured.value if measured is not None and measured.value is not None \
            else fallback

    def verify_alone(self, rows: int, expected: list[float]) -> int:
        """Of ``rows`` decoding rows, how many to verify alone: the best prefix of
        ``expected`` (tokens per verification, best first) by tokens per second, 0 when
        batching them all is as good or the costs are not measured yet."""
        batched = self._batched.get(rows)
        verify_s = self._verify.value
        if batched is None or batched.value is None or verify_s is None:
            return 0
        best_rate, best = rows / batched.value, 0
        tokens = 0.0
        for k, tokens_k in enumerate(expected, start=1):
            tokens += tokens_k
            left = rows - k
            rate = (tokens + left) / (k * verify_s + self._rows_s(left, batched.value))
            if rate > best_rate:
                best_rate, best = rate, k
        return best
