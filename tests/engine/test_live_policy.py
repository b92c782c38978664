"""The live policy on the real engine: ``/inferos/v1/policy`` acknowledged key by key,
versioned, refused to browsers and strangers, answered while a generation runs, and
followed by what the engine does (its store's levels, eviction, the quality guard)."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferos.engine.engine_policy import DOTTED_KEYS
from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, engine_process, sse_events

pytestmark = pytest.mark.model

POLICY = "/inferos/v1/policy"
GPL = Path("/usr/share/common-licenses/GPL-3")
APACHE = Path("/usr/share/common-licenses/Apache-2.0")
KEYS = set(DOTTED_KEYS)


def body(version: int, **changes: Any) -> dict[str, Any]:
    """A whole policy: the engine's defaults, with ``changes`` by dotted key."""
    policy: dict[str, Any] = {
        "version": version,
        "kv": {"recent_window": 64, "sink_tokens": 4,
               "level_thresholds": {"L1_int8": 0.7, "L2_int4": 0.5, "L3_evict": 0.3},
               "allow_evict": False},
        "io": {"host_pool_bytes": 4096 * 2**20},
        "quality": {"max_delta_ppl": 0.5, "min_accept_rate": 0.5},
        "scheduler": {"mode": "cpu_only", "prefill_device": "cpu", "decode_device": "cpu",
                      "max_batch": 8, "max_queue": 32, "tpot_budget_ms": 100.0},
        "speculation": {"enabled": True, "max_draft": 8},
    }
    for key, value in changes.items():
        section, leaf = key.split("__")
        policy[section][leaf] = value
    return policy


def thresholds(l1: float, l2: float, l3: float) -> dict[str, float]:
    return {"L1_int8": l1, "L2_int4": l2, "L3_evict": l3}


def leaves(applied: dict[str, Any]) -> dict[str, float]:
    """The thresholds of an ack, each reported under its own dotted key."""
    prefix = "kv.level_thresholds."
    return {k[len(prefix):]: v for k, v in applied.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("live_policy"), "--ctx-size", "512") as server:
        yield server


def post(server: RunningServer, policy: Any, status: int = 200,
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = httpx.post(server.url + POLICY, json=policy, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    return dict(response.json())


def stats(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/api/v1/stats", timeout=60)
    assert response.status_code == 200
    return dict(response.json())


def next_version(server: RunningServer) -> int:
    return int(httpx.get(server.url + POLICY, timeout=60).json()["version"]) + 1


def releveled(server: RunningServer, version: int) -> dict[str, Any]:
    """Stats once the parked KV has been re-leveled to ``version`` (the worker does it
    as soon as it is free; this waits for that, it does not time it)."""
    deadline = time.monotonic() + 120
    while True:
        current = stats(server)
        if current["policy"]["releveled_version"] >= version:
            return current
        assert time.monotonic() < deadline, current["policy"]
        time.sleep(0.05)


def chat(server: RunningServer, text: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/chat/completions", timeout=300, json={
        "model": MODEL, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": text}]})


def paragraphs(count: int, start: int = 0) -> list[str]:
    """``count`` distinct passages of real English, ~300 tokens each."""
    text = GPL.read_text()
    return [text[2000 + i * 1300:2000 + (i + 1) * 1300] for i in range(start, start + count)]


def test_before_any_post_the_ack_is_version_0_with_the_start_values(
        engine: RunningServer) -> None:
    ack = httpx.get(engine.url + POLICY, timeout=60).json()
    assert ack["version"] == 0
    assert set(ack["applied"]) | set(ack["not_applicable"]) == KEYS
    assert ack["applied"]["kv.recent_window"] == 64
    assert ack["applied"]["kv.sink_tokens"] == 4
    assert leaves(ack["applied"]) == thresholds(0.7, 0.5, 0.3)
    assert ack["applied"]["quality.max_delta_ppl"] == 0.5
    assert ack["applied"]["scheduler.mode"] == "cpu_only"
    assert stats(engine)["policy"]["version"] == 0


def test_post_acknowledges_every_key_and_stats_show_it(engine: RunningServer) -> None:
    version = next_version(engine)
    wanted = body(version, kv__recent_window=48, kv__sink_tokens=8, io__host_pool_bytes=2**30,
                  scheduler__mode="hybrid", scheduler__prefill_device="dml",
                  scheduler__decode_device="npu")
    ack = post(engine, wanted)
    assert ack["version"] == version
    applied, not_applicable = ack["applied"], ack["not_applicable"]
    assert set(applied) | set(not_applicable) == KEYS
    assert not set(applied) & set(not_applicable)
    assert applied["kv.recent_window"] == 48 and applied["kv.sink_tokens"] == 8
    assert applied["io.host_pool_bytes"] == 2**30
    assert applied["quality.min_accept_rate"] == 0.5
    assert "not available on this machine; prefill runs on cpu" in \
        not_applicable["scheduler.prefill_device"]
    assert "not available on this machine; decode runs on cpu" in \
        not_applicable["scheduler.decode_device"]
    assert "cpu_only" in not_applicable["scheduler.mode"]
    assert httpx.get(engine.url + POLICY, timeout=60).json() == ack
    shown = stats(engine)
    assert shown["policy"]["version"] == version
    assert shown["policy"]["kv.recent_window"] == 48
    assert shown["policy"]["not_applicable"] == not_applicable
    store = releveled(engine, version)["kv_store"]
    assert (store["recent_window"], store["sink_tokens"], store["host_pool_bytes"]) == \
        (48, 8, 2**30)
    assert set(shown["quality"]) >= {"delta_ppl_est", "calibrated", "guard"}
    assert set(shown["quality"]["guard"]) >= {"max_delta_ppl", "promotions",
                                              "last_promotion_at"}


def test_versions_older_refused_same_repeated_other_values_refused(
        engine: RunningServer) -> None:
    version = next_version(engine)
    first = post(engine, body(version + 1))
    again = post(engine, body(version + 1))
    assert again == first  # a retry of the same version: the same ack
    older = post(engine, body(version, kv__recent_window=32), status=409)
    assert older["version"] == version + 1 and older["error"]["code"] == "version_conflict"
    other = post(engine, body(version + 1, kv__recent_window=32), status=409)
    assert other["version"] == version + 1
    assert stats(engine)["policy"]["kv.recent_window"] == 64


def test_invalid_values_are_400_naming_the_key(engine: RunningServer) -> None:
    version = next_version(engine)
    bad = post(engine, body(version, kv__level_thresholds=thresholds(0.3, 0.5, 0.7)), 400)
    assert bad["error"]["param"] == "kv.level_thresholds"
    assert "L1_int8 >= L2_int4 >= L3_evict" in bad["error"]["message"]
    partial = copy.deepcopy(body(version))
    del partial["io"]["host_pool_bytes"]
    assert post(engine, partial, 400)["error"]["param"] == "io.host_pool_bytes"
    assert post(engine, body(version, kv__recent_window="64"), 400)["error"]["param"] == \
        "kv.recent_window"
    response = httpx.post(engine.url + POLICY, content=b"{not json",
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert next_version(engine) == version  # nothing was applied


def test_browsers_strangers_and_wrong_content_types_are_refused(
        engine: RunningServer) -> None:
    version = next_version(engine)
    raw = httpx.Request("POST", engine.url + POLICY, json=body(version)).content
    cases: list[tuple[dict[str, str], int, str]] = [
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Origin": "http://example.com"}, 403,
         "forbidden_origin"),
        ({"Content-Type": "application/json", "Origin": "null"}, 403, "forbidden_origin"),
        ({"Content-Type": "application/json", "Host": "attacker.example:8022"}, 403,
         "forbidden_host"),
        ({"Content-Type": "application/json", "Host": "127.0.0.1.nip.io"}, 403,
         "forbidden_host"),
    ]
    for headers, status, code in cases:
        response = httpx.post(engine.url + POLICY, content=raw, headers=headers, timeout=60)
        assert response.status_code == status, (headers, response.text)
        assert response.json()["error"]["code"] == code
    refused = httpx.get(engine.url + POLICY, headers={"Origin": "http://example.com"},
                        timeout=60)
    assert refused.status_code == 403
    for host in ("localhost", f"localhost:{engine.url.rsplit(':', 1)[1]}", "[::1]:1234",
                 "127.0.0.1"):
        response = httpx.get(engine.url + POLICY, headers={"Host": host}, timeout=60)
        assert response.status_code == 200, (host, response.text)
    assert next_version(engine) == version


def test_thresholds_change_what_the_store_holds(engine: RunningServer) -> None:
    version = next_version(engine)
    # Everything exact (importance is never below -0.3), no quality budget to meet.
    post(engine, body(version, kv__level_thresholds=thresholds(-1.0, -1.0, -1.0),
                      quality__max_delta_ppl=100.0))
    for text in paragraphs(2):
        assert chat(engine, text).status_code == 200
    exact = releveled(engine, version)["kv_levels"]
    post(engine, body(version + 1, kv__level_thresholds=thresholds(1.0, 1.0, 1.0),
                      quality__max_delta_ppl=100.0))
    demoted = releveled(engine, version + 1)["kv_levels"]
    # The unprotected middle of each conversation leaves L0: blocks that later blocks
    # continue go to INT4, leaves are evicted; sinks and recent windows stay exact.
    assert demoted["L0"]["tokens"] < exact["L0"]["tokens"]
    assert demoted["L2"]["tokens"] > exact["L2"]["tokens"]
    assert demoted["L0"]["tokens"] > 0
    # A new conversation's blocks go where the thresholds say as soon as it is parked.
    before = demoted
    assert chat(engine, paragraphs(1, start=2)[0]).status_code == 200
    after = releveled(engine, version + 1)["kv_levels"]
    assert after["L2"]["tokens"] > before["L2"]["tokens"]


def test_allow_evict_switches_the_too_long_prompt_live(engine: RunningServer) -> None:
    text = APACHE.read_text()[:2600] + "\nSummarize the above."
    version = next_version(engine)
    post(engine, body(version, kv__allow_evict=False))
    refused = chat(engine, text)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    ack = post(engine, body(version + 1, kv__allow_evict=True))
    assert ack["applied"]["kv.allow_evict"] is True
    answered = chat(engine, text)
    assert answered.status_code == 200, answered.text
    assert answered.json()["usage"]["prompt_tokens"] > 512
    evicted = stats(engine)["context_eviction"]
    assert evicted["enabled"] is True and evicted["evictions"] >= 1
    post(engine, body(version + 2, kv__allow_evict=False))
    assert chat(engine, text).status_code == 400
    assert stats(engine)["context_eviction"]["enabled"] is False


def test_the_quality_guard_keeps_parked_kv_within_its_budget(engine: RunningServer) -> None:
    version = next_version(engine)
    before = stats(engine)
    ack = post(engine, body(version, quality__max_delta_ppl=0.0))
    if not before["quality"]["calibrated"]:
        # Nothing to estimate with: said so, never invented.
        assert before["quality"]["delta_ppl_est"] is None
        assert "quality.max_delta_ppl" in ack["not_applicable"]
        return
    assert ack["applied"]["quality.max_delta_ppl"] == 0.0
    levels = releveled(engine, version)["kv_levels"]
    assert chat(engine, paragraphs(1, start=3)[0]).status_code == 200
    after = releveled(engine, version)
    # Default thresholds would quantize the new conversation's middle; the budget 0 keeps
    # it exact. Nothing already quantized went lower.
    assert after["kv_levels"]["L0"]["tokens"] > levels["L0"]["tokens"]
    for name in ("L1", "L2"):
        assert after["kv_levels"][name]["tokens"] <= levels[name]["tokens"]
    guard = after["quality"]["guard"]
    assert guard["max_delta_ppl"] == 0.0
    assert guard["promotions"] > before["quality"]["guard"]["promotions"]
    assert guard["last_promotion_at"] is not None
    assert isinstance(after["quality"]["delta_ppl_est"], float)


def test_the_ack_does_not_wait_for_a_running_generation(engine: RunningServer) -> None:
    version = next_version(engine)
    post(engine, body(version))
    order = itertools.count()
    seen: dict[str, int] = {}
    first_token = threading.Event()
    events: list[dict | str] = []

    def stream() -> None:
        request = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 300,
                   "temperature": 0, "stream": True}
        with httpx.stream("POST", engine.url + "/api/v1/completions", json=request,
                          timeout=300) as response:
            for line in response.iter_lines():
                events.extend(sse_events(iter([line])))
                if len(events) >= 2:
                    first_token.set()
        seen["done"] = next(order)
        first_token.set()

    reader = threading.Thread(target=stream, name="stream")
    reader.start()
    try:
        assert first_token.wait(120)
        assert "done" not in seen
        ack = post(engine, body(version + 1, kv__recent_window=96))
        seen["ack"] = next(order)
        tokens_at_ack = len(events)
        shown = stats(engine)["policy"]
        seen["stats"] = next(order)
    finally:
        reader.join(300)
    assert ack["version"] == version + 1 and ack["applied"]["kv.recent_window"] == 96
    assert shown["version"] == version + 1 and shown["kv.recent_window"] == 96
    assert seen["ack"] < seen["done"] and seen["stats"] < seen["done"]
    assert len(events) > tokens_at_ack  # the stream went on after the ack
    assert events[-1] == "[DONE]"
    # and the parked KV follows once the worker is free
    assert releveled(engine, version + 1)["kv_store"]["recent_window"] == 96


@pytest.fixture(scope="module")
def guarded_engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("guarded"), "--ctx-size", "256",
                        "--control-token", "s3cret", "--api-key", "k3y",
                        "--recent-window", "32", "--level-thresholds", "0.9,0.8,0.7",
                        "--max-delta-ppl", "0.25") as server:
        yield server


def test_a_control_token_and_the_api_key_are_both_required(
        guarded_engine: RunningServer) -> None:
    url = guarded_engine.url + POLICY
    auth = {"Authorization": "Bearer k3y"}
    assert httpx.get(url, timeout=60).status_code == 401  # the API key, as everywhere
    assert httpx.get(url, headers=auth, timeout=60).status_code == 403
    wrong = {**auth, "X-Inferos-Control-Token": "s3cre"}
    refused = httpx.post(url, json=body(1), headers=wrong, timeout=60)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "invalid_control_token"
    good = {**auth, "X-Inferos-Control-Token": "s3cret"}
    start = httpx.get(url, headers=good, timeout=60).json()
    assert start["version"] == 0
    assert start["applied"]["kv.recent_window"] == 32  # the flags are the start values
    assert leaves(start["applied"]) == thresholds(0.9, 0.8, 0.7)
    assert start["applied"]["quality.max_delta_ppl"] == 0.25
    ack = httpx.post(url, json=body(1), headers=good, timeout=60)
    assert ack.status_code == 200 and ack.json()["version"] == 1
