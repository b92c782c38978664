"""The scheduler's cost model on frozen measurements: chunk sizes within the budget, and
verifying rows of a batch alone only when the measured costs say it pays."""

from __future__ import annotations

from inferos.engine.step_costs import MIN_CHUNK, PREFILL_CHUNK, QUEUED_EFFICIENCY, StepCosts


def test_chunks_are_full_alone_small_unmeasured_and_sized_to_the_budget() -> None:
    costs = StepCosts()
    assert costs.chunk_size(PREFILL_CHUNK, 0, 0.1, 0.0) == PREFILL_CHUNK
    assert costs.chunk_size(PREFILL_CHUNK, 4, 0.1, 0.03) == 2 * MIN_CHUNK
    costs.single_step(0.02)                 # a run's fixed cost: 20 ms
    costs.chunk(100, 0.02 + 0.05, 0.03)     # 0.5 ms per prompt token beyond it
    # 100 ms budget - 30 ms decode - 20 ms fixed = 50 ms: 100 tokens
    assert costs.chunk_size(PREFILL_CHUNK, 4, 0.1, 0.03) == 100
    assert costs.chunk_size(64, 4, 0.1, 0.03) == 64          # never past full
    assert costs.chunk_size(PREFILL_CHUNK, 4, 0.04, 0.03) == MIN_CHUNK  # over budget: progress


def test_rows_are_verified_alone_only_when_that_measures_faster() -> None:
    costs = StepCosts()
    assert costs.verify_alone(4, [6.0, 6.0]) == 0  # nothing measured: batch
    costs.batched_step(4, 0.040)
    costs.batched_step(2, 0.032)
    costs.single_step(0.025)
    costs.verification(0.035)
    # batching 4 rows: 100 tok/s; the best two alone: (12 + 2) / (70 + 32 ms) = 137; one:
    # 9 / 75 ms = 120; three: 14.2 / 130 ms = 109
    assert costs.verify_alone(4, [6.0, 6.0, 1.2]) == 2
    # free text: a verification yields 1.3 tokens, which never pays
    assert costs.verify_alone(4, [1.3, 1.3, 1.3, 1.3]) == 0


def test_prompts_queued_behind_get_efficient_chunks_over_the_budget() -> None:
    costs = StepCosts()
    costs.single_step(0.02)                 # 20 ms fixed
    costs.chunk(100, 0.02 + 0.15, 0.03)     # 1.5 ms a prompt token
    # the budget leaves (100 - 45 - 20) / 1.5 = 23 tokens: a run at 63% of full speed
    assert costs.chunk_size(PREFILL_CHUNK, 4, 0.1, 0.045) == 23
    # with prompts queued behind it, at least 80%: 20 ms * 0.8 / (0.2 * 1.5 ms) -> 54
    efficient = costs.chunk_size(PREFILL_CHUNK, 4, 0.1, 0.045, queued=True)
    assert efficient == 54
    assert efficient * 0.0015 / (0.02 + efficient * 0.0015) >= QUEUED_EFFICIENCY
    # a budget with more room than that still decides
    assert costs.chunk_size(PREFILL_CHUNK, 4, 0.3, 0.045, queued=True) == 156
    # the expected cost of a chunk, for the decode step's reserve
    chunk_s = costs.chunk_s(MIN_CHUNK, 0.0)
    assert chunk_s is not None and abs(chunk_s - (0.02 + MIN_CHUNK * 0.0015)) < 1e-9


def test_verifying_alone_keeps_the_step_within_the_budget() -> None:
    costs = StepCosts()
    costs.batched_step(4, 0.040)
    costs.batched_step(2, 0.032)
    costs.single_step(0.025)
    costs.verification(0.035)
    assert costs.verify_alone(4, [6.0, 6.0, 1.2]) == 2          # 102 ms a step
    assert costs.verify_alone(4, [6.0, 6.0, 1.2], 0.1) == 1     # 75 ms fits, 102 does not
    assert costs.verify_alone(4, [6.0, 6.0, 1.2], 0.03) == 0    # under the batched step
