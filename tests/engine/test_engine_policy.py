"""The live policy's body: every key required, each refusal naming its key; the flags'
defaults are the kvstore's."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import pytest

from inferos.commands import engine as engine_command
from inferos.engine.api_errors import ApiError
from inferos.engine.engine_policy import (
    DEFAULT_MAX_DELTA_PPL,
    DOTTED_KEYS,
    POLICY_KEYS,
    EnginePolicy,
    dotted,
    parse_policy,
    parse_thresholds,
)
from inferos.errors import ConfigError
from inferos.kvstore.levels import DEFAULT_RECENT_WINDOW, DEFAULT_SINK_TOKENS, LevelThresholds
from inferos.kvstore.store import KvStoreConfig

BODY: dict[str, Any] = {
    "version": 3,
    "kv": {"recent_window": 128, "sink_tokens": 8,
           "level_thresholds": {"L1_int8": 0.9, "L2_int4": 0.8, "L3_evict": 0.7},
           "allow_evict": True},
    "io": {"host_pool_bytes": 512 * 2**20},
    "quality": {"max_delta_ppl": 0.1, "min_accept_rate": 0.6},
    "scheduler": {"mode": "hybrid", "prefill_device": "dml", "decode_device": "npu",
                  "max_batch": 4, "max_queue": 16, "tpot_budget_ms": 80.0},
    "speculation": {"enabled": False, "max_draft": 6},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    *parents, leaf = path.split(".")
    node = body
    for name in parents:
        node = node[name]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return body


_DELETE = object()


def _refused(body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_policy(body)
    assert caught.value.status == 400
    return caught.value


def test_a_whole_body_parses_to_the_policy_it_states() -> None:
    policy = parse_policy(BODY)
    assert policy == EnginePolicy(
        version=3, recent_window=128, sink_tokens=8,
        thresholds=LevelThresholds(0.9, 0.8, 0.7), allow_evict=True,
        host_pool_bytes=512 * 2**20, max_delta_ppl=0.1, min_accept_rate=0.6,
        scheduler_mode="hybrid", prefill_device="dml", decode_device="npu",
        max_batch=4, max_queue=16, tpot_budget_ms=80.0, speculation=False, max_draft=6)
    assert dotted(policy) == {
        "kv.recent_window": 128, "kv.sink_tokens": 8,
        "kv.level_thresholds.L1_int8": 0.9, "kv.level_thresholds.L2_int4": 0.8,
        "kv.level_thresholds.L3_evict": 0.7, "kv.allow_evict": True,
        "io.host_pool_bytes": 512 * 2**20,
        "quality.max_delta_ppl": 0.1, "quality.min_accept_rate": 0.6,
        "scheduler.mode": "hybrid", "scheduler.prefill_device": "dml",
        "scheduler.decode_device": "npu", "scheduler.max_batch": 4,
        "scheduler.max_queue": 16, "scheduler.tpot_budget_ms": 80.0,
        "speculation.enabled": False, "speculation.max_draft": 6}
    assert tuple(dotted(policy)) == DOTTED_KEYS
    # the parse table has one entry per body key; the thresholds object is one of them
    assert len(POLICY_KEYS) == len(DOTTED_KEYS) - 2
    config = policy.store_config(KvStoreConfig(block_tokens=16))
    assert (config.block_tokens, config.recent_window, config.sink_tokens,
            config.host_pool_bytes) == (16, 128, 8, 512 * 2**20)
    assert config.thresholds == LevelThresholds(0.9, 0.8, 0.7)


@pytest.mark.parametrize(("path", "value", "param"), [
    ("version", -1, "version"),
    ("version", True, "version"),
    ("version", _DELETE, "version"),
    ("kv", _DELETE, "kv"),
    ("kv", [], "kv"),
    ("kv.recent_window", -1, "kv.recent_window"),
    ("kv.recent_window", 1.5, "kv.recent_window"),
    ("kv.sink_tokens", _DELETE, "kv.sink_tokens"),
    ("kv.allow_evict", "yes", "kv.allow_evict"),
    ("kv.level_thresholds", {"L1_int8": 0.1, "L2_int4": 0.5, "L3_evict": 0.3},
     "kv.level_thresholds"),
    ("kv.level_thresholds.L2_int4", "half", "kv.level_thresholds.L2_int4"),
    ("kv.level_thresholds.L3_evict", float("nan"), "kv.level_thresholds.L3_evict"),
    ("kv.level_thresholds.L3_evict", _DELETE, "kv.level_thresholds.L3_evict"),
    ("kv.level_thresholds.L4", 0.1, "kv.level_thresholds.L4"),
    ("kv.cache_type", "q8_0", "kv.cache_type"),
    ("io.host_pool_bytes", 0, "io.host_pool_bytes"),
    ("io.host_pool_bytes", "4GiB", "io.host_pool_bytes"),
    ("quality.max_delta_ppl", -0.1, "quality.max_delta_ppl"),
    ("quality.min_accept_rate", 1.5, "quality.min_accept_rate"),
    ("scheduler.mode", "turbo", "scheduler.mode"),
    ("scheduler.decode_device", "tpu", "scheduler.decode_device"),
    ("backend", {"ctx_size": 2048}, "backend"),
])
def test_a_bad_value_is_refused_naming_its_key(path: str, value: Any, param: str) -> None:
    assert _refused(_with(path, value)).param == param


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert "object" in _refused([1, 2]).message


def test_thresholds_flag() -> None:
    assert parse_thresholds("0.9, 0.8,0.7") == LevelThresholds(0.9, 0.8, 0.7)
    for bad in ("0.9,0.8", "a,b,c", "0.1,0.5,0.3", "inf,0,0"):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)


def test_the_flags_help_states_the_defaults_the_engine_uses() -> None:
    parser = argparse.ArgumentParser()
    engine_command.add_parser(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub.choices["engine"]._actions}
    t = LevelThresholds()
    assert f"default {DEFAULT_RECENT_WINDOW};" in helps["recent_window"]
    assert f"default {DEFAULT_SINK_TOKENS};" in helps["sink_tokens"]
    assert f"default {t.l1_int8},{t.l2_int4},{t.l3_evict};" in helps["level_thresholds"]
    assert f"default {DEFAULT_MAX_DELTA_PPL};" in helps["max_delta_ppl"]


def test_the_start_policy_says_what_runs() -> None:
    cpu = EnginePolicy.starting("CPUExecutionProvider", host_pool_bytes=2**20)
    assert (cpu.version, cpu.scheduler_mode, cpu.prefill_device, cpu.decode_device,
            cpu.host_pool_bytes) == (0, "cpu_only", "cpu", "cpu", 2**20)
    dml = EnginePolicy.starting("DmlExecutionProvider")
    assert (dml.scheduler_mode, dml.prefill_device) == ("gpu_only", "dml")
    assert cpu.same_settings(EnginePolicy.starting("CPUExecutionProvider",
                                                   host_pool_bytes=2**20))
    assert not cpu.same_settings(dml)
