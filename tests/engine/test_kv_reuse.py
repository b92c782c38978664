"""Prefix reuse across requests and conversations through the kvstore, on the real model.

Interleaved conversations each find their own history in the store (the pool's one free
buffer holds only the last one); restored L0 blocks (parked in float16) give the tokens of
a cold run and logits within 0.02 of its, INT8 blocks stay within a measured logit bound;
a small host pool demotes parked KV and its bytes drop; stats have the shapes the
controller reads; a cancelled generation still returns its buffer and parks what it
computed. The models here run a policy whose
thresholds keep parked KV exact until the byte budget presses (the default thresholds
would quantize it: tests/engine/test_live_policy.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inferos.controller.backend_stats import BackendStats
from inferos.engine.runtime import EngineOptions, LoadedModel, SamplingParams, load_model
from inferos.kvstore.levels import Level, LevelThresholds
from tests.backends import RunningServer
from tests.engine.engine_process import engine_process

pytestmark = pytest.mark.model

LICENSE = Path("/usr/share/common-licenses/GPL-3")
ANSWER_TOKENS = 6


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real English paragraphs, one per user message."""
    paragraphs = [p.strip() for p in LICENSE.read_text().split("\n\n") if len(p) > 300]
    return paragraphs[:12]


def _load(folder: Path, **options: Any) -> LoadedModel:
    """The model with a policy that keeps parked KV exact until the byte budget presses
    (importance is never below -eta = -0.3)."""
    model = load_model(str(folder), EngineOptions(threads=2, ctx_size=2048, **options))
    model.set_policy(replace(model.policy, version=1,
                             thresholds=LevelThresholds(-1.0, -1.0, -1.0)))
    return model


@pytest.fixture(scope="module")
def cold(smollm2_folder: Path) -> Iterator[LoadedModel]:
    model = _load(smollm2_folder, prefix_cache=False)
    yield model
    model.close()


@pytest.fixture
def warm(smollm2_folder: Path) -> Iterator[LoadedModel]:
    model = _load(smollm2_folder)
    yield model
    model.close()


def _chat(model: LoadedModel, texts: list[str], conversations: int, turns: int
          ) -> list[list[tuple[int, int, list[int]]]]:
    """Interleaved chats (turn 1 of every conversation, then turn 2...); per conversation
    and turn: (prompt length, cached tokens, answer tokens)."""
    history: list[list[dict[str, str]]] = [[] for _ in range(conversations)]
    seen: list[list[tuple[int, int, list[int]]]] = [[] for _ in range(conversations)]
    for turn in range(turns):
        for conv in range(conversations):
            history[conv].append({"role": "user",
                                  "content": texts[(conv * turns + turn) % len(texts)]})
            prompt = model.encode(model.chat_prompt(history[conv]))
            events = list(model.generate(prompt, SamplingParams(max_tokens=ANSWER_TOKENS)))
            answer = [e.token_id for e in events]
            history[conv].append({"role": "assistant", "content": model.decode(
                [t for t in answer if t not in model.stop_ids])})
            seen[conv].append((len(prompt), events[0].cached_tokens, answer))
    return seen


def test_interleaved_conversations_hit_and_match_a_cold_run(
        warm: LoadedModel, cold: LoadedModel, texts: list[str]) -> None:
    got = _chat(warm, texts, conversations=3, turns=3)
    reference = _chat(cold, texts, conversations=3, turns=3)
    block = warm.stats()["kv_store"]["block_tokens"]
    for conv, turns in enumerate(got):
        for turn, (length, cached, answer) in enumerate(turns):
            assert answer == reference[conv][turn][2], (conv, turn)  # L0: token for token
            assert reference[conv][turn][1] == 0  # reuse off: nothing cached, ever
            if turn > 0:
                # Another conversation used the buffer in between: this came from the
                # store, at least every full block of the previous turn's prompt.
                previous = turns[turn - 1][0]
                assert cached >= previous // block * block, (conv, turn, cached, previous)
                assert cached < length
    stats = warm.stats()
    assert stats["prefix_cache"]["hits"] >= 6
    assert stats["kv_store"]["restored_tokens"] > 0
    assert stats["kv_levels"]["L0"]["tokens"] > 0
    assert stats["kv_levels"]["L1"]["tokens"] == stats["kv_levels"]["L2"]["tokens"] == 0
    assert stats["kv_pool"]["in_use"] == 0


def _park_and_demote(model: LoadedModel, prompt: list[int], level: Level) -> None:
    """Parks ``prompt``'s KV, moves its unprotected blocks to ``level``, and takes the
    buffer away so that a reuse has to come from the store."""
    model.next_logits(prompt)
    store = model.pool.cache.store  # type: ignore[union-attr]
    for block in store.blocks():
        if not store.is_protected(block):
            for chunk in block.chunks:
                chunk.move_to(level)
    model.next_logits(model.encode("An unrelated prompt about the weather. " * 8))


@pytest.mark.parametrize("level", [Level.L0, Level.L1])
def test_restored_blocks_against_a_cold_run(smollm2_folder: Path, cold: LoadedModel,
                                            texts: list[str], level: Level) -> None:
    model = _load(smollm2_folder)
    try:
        history = [{"role": "user", "content": "\n\n".join(texts[:4])}]
        first = model.encode(model.chat_prompt(history))
        history += [{"role": "assistant", "content": "I have read it."},
                    {"role": "user", "content": "Summarize it in one sentence."}]
        second = model.encode(model.chat_prompt(history))
        assert second[:len(first)] == first and len(first) > 400
        _park_and_demote(model, first, level)
        levels = model.stats()["kv_levels"]
        assert levels[level.name]["tokens"] >= len(first) - 4 * 32 - 32

        restored = model.next_logits(second)
        reference = cold.next_logits(second)
        assert model.stats()["kv_store"]["restored_tokens"] >= len(first) // 32 * 32 - 32
        diff = float(np.abs(restored - reference).max())
        if level is Level.L0:
            # Parked in float16 (issue 11): measured 0.0029-0.0038 on licence prompts of
            # 446-518 tokens; bit for bit only while L0 was parked in float32.
            assert 0.0 < diff < 0.02, diff
        else:
            # INT8, KIVI groups of 32: measured 0.011 on this prompt (INT4: 0.25)
            assert diff < 0.1, diff
        assert restored.argmax() == reference.argmax()
        model.pool.clear()
        _park_and_demote(model, first, level)
        ours = [e.token_id for e in model.generate(second, SamplingParams(max_tokens=16))]
        theirs = [e.token_id for e in cold.generate(second, SamplingParams(max_tokens=16))]
        assert ours[:8] == theirs[:8]
        if level is Level.L0:
            assert ours == theirs
    finally:
        model.close()


def test_host_pool_budget_demotes_parked_sessions(smollm2_folder: Path, texts: list[str]
                                                  ) -> None:
    roomy = _load(smollm2_folder)
    try:
        _chat(roomy, texts, conversations=3, turns=2)
        exact = roomy.stats()["kv_store"]["bytes"]
    finally:
        roomy.close()
    budget = exact // 3  # float16 would take half: some blocks must be quantized
    tight = _load(smollm2_folder, host_pool_bytes=budget)
    try:
        turns = _chat(tight, texts, conversations=3, turns=3)
        stats = tight.stats()
    finally:
        tight.close()
    store, levels = stats["kv_store"], stats["kv_levels"]
    assert store["bytes"] <= budget < exact
    assert store["host_pool_bytes"] == budget
    assert levels["L1"]["tokens"] + levels["L2"]["tokens"] > 0
    assert sum(levels[name]["bytes"] for name in ("L0", "L1", "L2")) == store["bytes"]
    # the quantized sessions still serve their next turns
    assert all(t[2][1] > 0 and t[1][1] > 0 for t in turns)
    assert store["bytes"] < store["fp16_bytes"]


def test_stats_shapes_and_what_the_controller_reads(warm: LoadedModel, texts: list[str]
                                                    ) -> None:
    _chat(warm, texts, conversations=2, turns=2)
    stats = warm.stats()
    assert set(stats["kv_levels"]) == {"L0", "L1", "L2", "L3"}
    for entry in stats["kv_levels"].values():
        assert set(entry) == {"tokens", "bytes"}
        assert all(isinstance(v, int) and v >= 0 for v in entry.values())
    assert {"hits", "misses", "reused_tokens"} <= set(stats["prefix_cache"])
    assert stats["prefix_cache"]["hits"] + stats["prefix_cache"]["misses"] == 4
    parsed = BackendStats.parse(stats)
    assert set(parsed.kv_tokens) == {"L0", "L1", "L2", "L3"}
    assert parsed.prefix_hits == stats["prefix_cache"]["hits"] >= 2
    assert stats["kv_store"]["bytes"] == stats["kv_levels"]["L0"]["bytes"] > 0
    # L0 parked in float16: the bytes of FP16, half the buffers' float32 (issue 11)
    assert stats["kv_store"]["bytes"] == stats["kv_store"]["fp16_bytes"]
    assert stats["kv_store"]["exact_bytes"] == 2 * stats["kv_store"]["bytes"]
    memory = stats["memory"]
    assert memory["parked_kv_bytes"] == stats["kv_store"]["bytes"]
    assert memory["batch_buffer_bytes"] == stats["kv_pool"]["allocated_bytes"]
    assert memory["budget_bytes"] == (memory["start_rss_bytes"] + memory["batch_buffer_bytes"]
                                      + memory["host_pool_bytes"])
    assert 0 < memory["batch_buffer_resident_bytes"] <= memory["batch_buffer_bytes"]
    assert memory["start_rss_bytes"] > memory["weights_bytes"] // 2 > 0
    assert parsed.memory is not None and parsed.memory.kinds["parked_kv"] > 0


def test_reuse_off_reports_an_empty_store(cold: LoadedModel) -> None:
    list(cold.generate(cold.encode("Hello there, how are you today?"),
                       SamplingParams(max_tokens=2)))
    stats = cold.stats()
    assert stats["prefix_cache"]["enabled"] is False and stats["kv_store"] is None
    assert all(e == {"tokens": 0, "bytes": 0} for e in stats["kv_levels"].values())


def test_cancelled_generation_returns_its_buffer_and_parks_its_kv(
        warm: LoadedModel, texts: list[str]) -> None:
    prompt = warm.encode(warm.chat_prompt([{"role": "user", "content": texts[0]}]))
    stop = threading.Event()
    events = warm.generate(prompt, SamplingParams(max_tokens=40), cancelled=stop.is_set)
    produced = [next(events).token_id for _ in range(3)]
    assert warm.pool.stats()["in_use"] == 1
    stop.set()
    assert list(events) == []
    assert warm.pool.stats()["in_use"] == 0
    # The prompt and the two tokens run after it were parked (the third was never run).
    warm.next_logits(warm.encode("Something else entirely, to take the buffer. " * 6))
    again = prompt + produced[:2]
    events = warm.generate(again, SamplingParams(max_tokens=40))
    assert next(events).cached_tokens == (len(again) - 1) // 32 * 32
    events.close()  # a consumer that stops early (a stop string, a client gone)
    assert warm.pool.stats()["in_use"] == 0
    warm.pool.clear()  # buffers and parked KV gone: the next run is cold
    assert warm.stats()["kv_store"]["blocks"] == 0
    assert next(iter(warm.generate(again, SamplingParams(max_tokens=1)))).cached_tokens == 0


@pytest.fixture(scope="module")
def small_pool_engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("kv_reuse"), "--ctx-size", "1024",
                        "--host-pool-bytes", "6MiB") as server:
        yield server


def _stats(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/api/v1/stats", timeout=60)
    assert response.status_code == 200
    return dict(response.json())


def test_engine_server_reuses_a_conversation_under_its_host_pool(
        small_pool_engine: RunningServer, texts: list[str]) -> None:
    messages = [{"role": "user", "content": texts[0] + "\n\n" + texts[1]}]
    url = small_pool_engine.url + "/api/v1/chat/completions"
    body = {"model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0}
    first = httpx.post(url, json={**body, "messages": messages}, timeout=300).json()
    messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And then?"}]
    other = [{"role": "user", "content": texts[2]}]
    httpx.post(url, json={**body, "messages": other}, timeout=300).raise_for_status()
    second = httpx.post(url, json={**body, "messages": messages}, timeout=300).json()
    assert second["timings"]["cache_n"] >= 192
    stats = _stats(small_pool_engine)
    assert stats["cache_tokens"] == second["timings"]["cache_n"]
    assert stats["kv_store"]["host_pool_bytes"] == 6 * 2**20
    assert stats["kv_store"]["bytes"] <= 6 * 2**20
    # The two chats made ten blocks, 1.4 MiB each in float32, 0.7 in float16: 6 MiB hold
    # the protected ones in float16 and the rest quantized.
    levels = stats["kv_levels"]
    assert levels["L1"]["tokens"] + levels["L2"]["tokens"] + levels["L3"]["tokens"] > 0
    assert stats["prefix_cache"]["hits"] >= 1
    assert stats["kv_pool"]["in_use"] == 0
