"""The ack: every key applied or not applicable with a reason, never both, never silent."""

from __future__ import annotations

from dataclasses import replace

from inferos.engine.engine_policy import DOTTED_KEYS, THRESHOLD_KEYS, EnginePolicy
from inferos.engine.policy_ack import EngineFacts, acknowledge

CPU = EngineFacts(provider="CPUExecutionProvider",
                  available_providers=("CPUExecutionProvider",))
POLICY = EnginePolicy(version=7, scheduler_mode="hybrid", prefill_device="dml",
                      decode_device="npu", allow_evict=True)


def _partition(facts: EngineFacts, policy: EnginePolicy = POLICY) -> tuple[dict, dict]:
    ack = acknowledge(policy, facts)
    assert ack.version == policy.version
    assert set(ack.applied) | set(ack.not_applicable) == set(DOTTED_KEYS)
    assert not set(ack.applied) & set(ack.not_applicable)
    assert all(isinstance(r, str) and r for r in ack.not_applicable.values())
    return ack.applied, ack.not_applicable


def test_on_a_cpu_only_machine_absent_devices_are_reported_fallen_back() -> None:
    applied, not_applicable = _partition(CPU)
    assert applied["kv.recent_window"] == 64 and applied["kv.allow_evict"] is True
    assert [applied[k] for k in THRESHOLD_KEYS] == [0.7, 0.5, 0.3]
    assert applied["quality.min_accept_rate"] == 0.5  # the scheduler speculates
    assert applied["scheduler.max_batch"] == 8 and applied["speculation.enabled"] is True
    assert not_applicable["scheduler.prefill_device"] == \
        "dml is not available on this machine; prefill runs on cpu"
    assert not_applicable["scheduler.decode_device"] == \
        "npu is not available on this machine; decode runs on cpu"
    assert "cpu_only" in not_applicable["scheduler.mode"]


def test_what_matches_what_runs_is_applied() -> None:
    policy = replace(POLICY, scheduler_mode="cpu_only", prefill_device="cpu",
                     decode_device="cpu")
    applied, not_applicable = _partition(CPU, policy)
    assert applied["scheduler.mode"] == "cpu_only"
    assert applied["scheduler.prefill_device"] == applied["scheduler.decode_device"] == "cpu"
    assert not not_applicable


def test_an_available_device_the_engine_does_not_run_on_says_so() -> None:
    facts = replace(CPU, available_providers=("DmlExecutionProvider", "CPUExecutionProvider"))
    _, not_applicable = _partition(facts)
    assert "one provider" in not_applicable["scheduler.prefill_device"]
    gpu = replace(facts, provider="DmlExecutionProvider")
    applied, _ = _partition(gpu, replace(POLICY, scheduler_mode="gpu_only"))
    assert applied["scheduler.prefill_device"] == "dml"
    assert applied["scheduler.mode"] == "gpu_only"


def test_what_this_model_cannot_do_is_not_applicable_with_its_reason() -> None:
    facts = replace(CPU, no_eviction="keys not rotated as Llama's",
                    no_calibration="no kv_calibration.json")
    applied, not_applicable = _partition(facts)
    assert not_applicable["kv.allow_evict"] == "keys not rotated as Llama's"
    assert not_applicable["quality.max_delta_ppl"] == "no kv_calibration.json"
    # Not evicting is what such a model does: that is in effect.
    applied, _ = _partition(facts, replace(POLICY, allow_evict=False))
    assert applied["kv.allow_evict"] is False


def test_without_a_prefix_cache_store_settings_do_not_apply() -> None:
    facts = replace(CPU, prefix_cache=False)
    applied, not_applicable = _partition(facts)
    for key in (*THRESHOLD_KEYS, "io.host_pool_bytes", "quality.max_delta_ppl"):
        assert "prefix cache is off" in not_applicable[key]
    # the window and sinks still govern eviction inside a context
    assert applied["kv.recent_window"] == 64 and applied["kv.sink_tokens"] == 4
    _, not_applicable = _partition(facts, replace(POLICY, allow_evict=False))
    assert "no context evicts" in not_applicable["kv.recent_window"]
