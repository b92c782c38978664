"""The engine core on the real SmolLM2 model: the same tokens as onnxruntime-genai's
Generator, prefix reuse that changes nothing, KV written in place, buffers always returned,
bad prompts refused, text never split inside a character, preparation cached."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferos.engine.detokenize import Detokenizer
from inferos.engine.prepare import MANIFEST, SOURCES, ensure_prepared, gguf_path
from inferos.engine.runtime import EngineOptions, LoadedModel, SamplingParams, load_model
from inferos.errors import ModelError

PROMPTS = ["What is the capital of France?",
           "Write one sentence about the sea, then list three fish."]


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Iterator[LoadedModel]:
    loaded = load_model(str(smollm2_folder), EngineOptions(threads=2, ctx_size=1024))
    yield loaded
    loaded.close()


def _ids(model: LoadedModel, question: str) -> list[int]:
    return model.encode(model.chat_prompt([{"role": "user", "content": question}]))


def _greedy(model: LoadedModel, prompt: list[int], n: int) -> list[int]:
    return [e.token_id for e in model.generate(prompt, SamplingParams(max_tokens=n))]


def _genai_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    out: list[int] = []
    while not generator.is_done() and len(out) < n:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("question", PROMPTS)
def test_greedy_tokens_equal_onnxruntime_genai(model: LoadedModel, smollm2_folder: Path,
                                               question: str) -> None:
    prompt = _ids(model, question)
    model.pool.clear()  # a cold buffer: no prefix reuse in this comparison
    ours = _greedy(model, prompt, 32)
    reference = _genai_greedy(smollm2_folder, prompt, 32)
    # genai stops at its eos and does not return it; we return it with finish "stop"
    assert ours[:len(reference)] == reference
    assert len(ours) == len(reference) or ours[len(reference)] in model.stop_ids


def test_the_model_knows_paris(model: LoadedModel) -> None:
    events = list(model.generate(_ids(model, PROMPTS[0]), SamplingParams(max_tokens=24)))
    assert "Paris" in "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop"


def test_prefix_reuse_gives_the_same_tokens_as_a_cold_start(model: LoadedModel) -> None:
    first = _ids(model, PROMPTS[1])
    model.pool.clear()
    cold = _greedy(model, first, 20)
    hits = model.counters.prefix_hits
    events = list(model.generate(first, SamplingParams(max_tokens=20)))
    assert [e.token_id for e in events] == cold
    assert events[0].cached_tokens == len(first) - 1  # all but the token that gives logits
    assert model.counters.prefix_hits == hits + 1
    # a different question after the same system prompt reuses only the shared prefix
    other = _ids(model, PROMPTS[0])
    shared = next(i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b)
    events = list(model.generate(other, SamplingParams(max_tokens=12)))
    assert events[0].cached_tokens == shared
    model.pool.clear()
    assert [e.token_id for e in events] == _greedy(model, other, 12)


def test_kv_is_written_in_place_not_copied(model: LoadedModel) -> None:
    before = model.stats()["kv_copy"]
    model.pool.clear()  # a new buffer: its first run is always checked
    _greedy(model, _ids(model, PROMPTS[0]), 8)
    after = model.stats()["kv_copy"]
    assert after["runs"] > before["runs"] and after["checked_runs"] > before["checked_runs"]
    assert after["bytes_in_place"] > before["bytes_in_place"]
    assert after["copies"] == 0 and after["bytes"] == 0
    engine = model.stats()["engine"]
    assert engine["prompt_tokens"] >= engine["generations"] > 0


def test_cancel_and_early_close_return_the_buffer(model: LoadedModel) -> None:
    prompt = _ids(model, PROMPTS[1])
    stop = threading.Event()
    events = model.generate(prompt, SamplingParams(max_tokens=50), cancelled=stop.is_set)
    next(events)
    assert model.pool.stats()["in_use"] == 1
    stop.set()
    assert list(events) == []  # the cancelled flag ends it at the next token
    assert model.pool.stats()["in_use"] == 0
    events = model.generate(prompt, SamplingParams(max_tokens=50))
    next(events)
    events.close()  # a consumer that stops early (a stop string, a client gone)
    assert model.pool.stats()["in_use"] == 0


def test_max_tokens_and_the_end_of_the_context(smollm2_folder: Path) -> None:
    small = load_model(str(smollm2_folder), EngineOptions(threads=1, ctx_size=48))
    try:
        prompt = small.encode("one two three four five six seven eight nine ten " * 4)[:40]
        events = list(small.generate(prompt, SamplingParams(max_tokens=100,
                                                            repeat_penalty=1.3)))
        assert len(events) <= 48 - 40 and events[-1].finish_reason in ("length", "stop")
        with pytest.raises(ValueError, match="context holds 48"):
            small.generate(prompt * 2, SamplingParams(max_tokens=1))
        with pytest.raises(ValueError, match="empty"):
            small.generate([], SamplingParams(max_tokens=1))
        with pytest.raises(ValueError, match="token ids"):
            small.generate([10**9], SamplingParams(max_tokens=1))
        assert small.pool.stats()["in_use"] == 0
    finally:
        small.close()


def test_seeded_sampling_repeats_and_seeds_differ(model: LoadedModel) -> None:
    prompt = _ids(model, "Tell me a short story about a cat.")

    def sample(seed: int) -> list[int]:
        params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=seed)
        return [e.token_id for e in model.generate(prompt, params)]

    assert sample(11) == sample(11)
    assert len({tuple(sample(seed)) for seed in (1, 2, 3)}) > 1


def test_detokenizer_never_splits_a_character(model: LoadedModel) -> None:
    text = "Crème brûlée 🙂 costs 5 € — 東京 too."
    ids = model.encode(text)
    detok = Detokenizer(model.tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_load_refuses_what_it_cannot_do(smollm2_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kv_precision"):
        LoadedModel("m", smollm2_folder, EngineOptions(kv_precision="int3"))
    with pytest.raises(ModelError, match="not a prepared model"):
        LoadedModel("m", tmp_path, EngineOptions())
    with pytest.raises(ModelError, match="not prepared"):
        load_model("no-such-model", EngineOptions())


def test_preparation_is_cached_with_a_manifest(smollm2_folder: Path) -> None:
    said: list[str] = []
    again = ensure_prepared("SmolLM2-135M-Instruct", progress=said.append)
    assert again == smollm2_folder and said == []  # cached: nothing to do, nothing said
    manifest = json.loads((smollm2_folder / MANIFEST).read_text())
    # The GGUF the installed package ships now: the manifest's path is where it was when
    # the model was prepared, which may be a virtual environment gone since (the cache
    # outlives checkouts).
    source = gguf_path(SOURCES["smollm2-135m-instruct"])
    assert manifest["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["precision"] == "fp32" and manifest["tools"]["onnxruntime-genai"]
    with pytest.raises(ModelError, match="unknown model"):
        ensure_prepared("gpt-17")
    with pytest.raises(ModelError, match="unknown precision"):
        ensure_prepared(precision="int2")
