"""Observation turns delivered bytes into counts and times, with the source of each count."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferos.proxy.observation import Observation
from inferos.proxy.record import build_record
from inferos.proxy.routes import route_label


def _obs(body: object, chunks: list[bytes], content_type: str = "text/event-stream",
         route_path: str = "/api/v1/chat/completions") -> Observation:
    obs = Observation("POST", route_path, route_label(route_path), 1 << 20)
    obs.started = 100.0
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    obs.on_request_chunk(raw)
    obs.on_response(200, content_type)
    for i, chunk in enumerate(chunks):
        obs.chunks.append(chunk)
        obs.chunk_times.append(100.5 + 0.1 * i)
    obs.ended = 100.5 + 0.1 * len(chunks)
    return obs


def _delta(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode() + b"\n\n"


def test_stream_with_usage_takes_counts_from_usage_and_times_from_chunks() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    chunks = [b": ping\n\n", _delta("a"), _delta("b"), _delta("c"),
              b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]
    record = build_record(_obs({"model": "smol", "stream": True, "messages": []}, chunks))
    assert record.model == "smol" and record.stream and record.route == "chat/completions"
    assert (record.prompt_tokens, record.completion_tokens) == (12, 3)
    assert record.prompt_source == record.completion_source == "usage"
    assert abs(record.ttft_s - 0.6) < 1e-9  # the ping is not a token
    assert len(record.gaps_s) == 2 and all(abs(g - 0.1) < 1e-9 for g in record.gaps_s)
    assert abs(record.tpot_s - 0.1) < 1e-9


def test_responses_stream_counts_come_from_its_completed_response() -> None:
    def event(kind: str, **fields: object) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    chunks = [event("response.created", response={"status": "in_progress", "usage": None}),
              event("response.output_text.delta", delta="Pa"),
              event("response.output_text.delta", delta="ris"),
              event("response.output_text.done", text="Paris"),
              event("response.completed", response={
                  "status": "completed", "usage": {"input_tokens": 9, "output_tokens": 2}})]
    record = build_record(_obs({"model": "m", "stream": True, "input": "Capital?"}, chunks,
                               route_path="/api/v1/responses"))
    assert record.route == "responses"
    assert (record.prompt_tokens, record.completion_tokens) == (9, 2)
    assert record.prompt_source == record.completion_source == "usage"
    assert abs(record.ttft_s - 0.6) < 1e-9  # the first delta, not response.created


def test_llamacpp_timings_are_used_when_usage_is_absent() -> None:
    last = {"choices": [{"delta": {}, "finish_reason": "stop"}],
            "timings": {"prompt_n": 7, "predicted_n": 2}}
    chunks = [_delta("a"), _delta("b"), b"data: " + json.dumps(last).encode() + b"\n\n"]
    record = build_record(_obs({"model": "m", "stream": True}, chunks))
    assert (record.prompt_tokens, record.completion_tokens) == (7, 2)
    assert record.prompt_source == record.completion_source == "timings"


def test_speculation_counts_come_from_timings() -> None:
    # The embedded engine's last chunk, as it streams one (llama.cpp's names).
    last = {"choices": [{"delta": {}, "finish_reason": "length"}],
            "timings": {"cache_n": 159, "prompt_n": 1, "predicted_n": 64, "queue_ms": 0.383,
                        "draft_n": 16, "draft_n_accepted": 4}}
    chunks = [_delta("a"), _delta("b"), b"data: " + json.dumps(last).encode() + b"\n\n"]
    record = build_record(_obs({"model": "m", "stream": True}, chunks))
    assert (record.draft_tokens, record.draft_accepted) == (16, 4)
    assert record.spec_accept == 0.25
    body = {"choices": [{"message": {"content": "x"}}], "timings": {"draft_n": 3,
                                                                     "draft_n_accepted": 3}}
    record = build_record(_obs({"model": "m"}, [json.dumps(body).encode()], "application/json"))
    assert record.spec_accept == 1.0


@pytest.mark.parametrize("timings", [
    {"prompt_n": 7, "predicted_n": 2},              # llama.cpp not speculating: no draft_n
    {"draft_n": 0, "draft_n_accepted": 0},          # the engine, nothing drafted
    {"draft_n": 2, "draft_n_accepted": 5},          # not a share
    {"draft_n": "2", "draft_n_accepted": 1},
    {"draft_n": 4},
])
def test_no_acceptance_without_drafts(timings: dict[str, object]) -> None:
    last = {"choices": [{"delta": {}, "finish_reason": "stop"}], "timings": timings}
    chunks = [_delta("a"), b"data: " + json.dumps(last).encode() + b"\n\n"]
    assert build_record(_obs({"model": "m", "stream": True}, chunks)).spec_accept is None


def test_a_response_without_timings_has_no_draft_counts() -> None:
    record = build_record(_obs({"model": "m", "stream": True}, [_delta("a")]))
    assert record.draft_tokens is None and record.draft_accepted is None


def test_counted_and_estimated_when_the_backend_reports_nothing() -> None:
    # Lemonade's Python ONNX streams: no usage, no finish chunk; a split event too.
    chunks = [_delta("Hello")[:10], _delta("Hello")[10:], _delta(" world")]
    record = build_record(_obs({"model": "m", "stream": True,
                                "messages": [{"role": "user", "content": "x" * 40}]}, chunks))
    assert record.completion_tokens == 2 and record.completion_source == "counted"
    assert record.prompt_tokens == 10 and record.prompt_source == "estimate"


def test_non_stream_response_with_usage() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "Paris."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
    record = build_record(_obs({"model": "m"}, [json.dumps(body).encode()], "application/json"))
    assert not record.stream and record.ttft_s is None
    assert (record.prompt_tokens, record.completion_tokens) == (5, 4)


def test_in_band_error_is_noticed() -> None:
    chunks = [_delta("a"), b'data: {"error":{"message":"boom"}}\n\n']
    assert build_record(_obs({"model": "m", "stream": True}, chunks)).in_band_error


def test_non_generation_routes_are_not_parsed() -> None:
    record = build_record(_obs(b"", [b'{"data": []}'], "application/json", "/api/v1/models"))
    assert record.route == "models" and record.completion_tokens is None


def test_route_labels_cover_every_prefix_and_stay_bounded() -> None:
    for prefix in ("/api/v1", "/api/v0", "/v1", "/v0"):
        assert route_label(prefix + "/chat/completions") == "chat/completions"
        assert route_label(prefix + "/models/user.Qwen/x") == "models/{id}"
    assert route_label("/api/chat") == "ollama/chat"
    assert route_label("/live") == "live"
    assert route_label("/api/v1/" + "x" * 500) == "other"
    assert route_label("/wp-admin") == "other"


@given(body=st.binary(max_size=300), chunks=st.lists(st.binary(max_size=64), max_size=12),
       ctype=st.sampled_from(["text/event-stream", "application/json", "text/plain", ""]))
def test_any_bytes_at_all_never_break_observation(body: bytes, chunks: list[bytes],
                                                  ctype: str) -> None:
    record = build_record(_obs(body, chunks, ctype))
    assert record.e2e_s >= 0
    assert record.completion_tokens is None or record.completion_tokens >= 0
    assert record.spec_accept is None or 0.0 <= record.spec_accept <= 1.0
