"""Lemonade's control endpoints on the engine: models, load, unload, health, stats, system-info.

Shapes are checked against LEMONADE_API.md (C++-era server). These tests change what is
loaded, so they run on an engine of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, engine_process

pytestmark = pytest.mark.model

MODEL_MAX_CONTEXT = 8192  # SmolLM2-135M's trained context (GGUF metadata)


@pytest.fixture(scope="module")
def own_engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningServer]:
    with engine_process(tmp_path_factory.mktemp("control"), "--ctx-size", "512") as server:
        yield server


def _get(server: RunningServer, path: str) -> Any:
    response = httpx.get(server.url + "/api/v1/" + path, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _post(server: RunningServer, path: str, body: dict[str, Any] | None = None,
          status: int = 200) -> Any:
    response = httpx.post(server.url + "/api/v1/" + path, json=body, timeout=300)
    assert response.status_code == status, response.text
    return response.json()


def _loaded(server: RunningServer) -> dict[str, Any]:
    health = _get(server, "health")
    assert len(health["all_models_loaded"]) == 1
    return dict(health["all_models_loaded"][0])


def test_health_shape(own_engine: RunningServer) -> None:
    health = _get(own_engine, "health")
    assert health["status"] == "ok"
    assert isinstance(health["version"], str)
    assert health["model_loaded"] == MODEL
    assert health["max_models"]["llm"] == 1
    entry = _loaded(own_engine)
    assert {"model_name", "checkpoint", "recipe", "recipe_options", "device", "type",
            "backend_url", "pid", "is_busy"} <= set(entry)
    assert entry["model_name"] == MODEL and entry["type"] == "llm"
    assert entry["device"] == "cpu" and entry["is_busy"] is False
    assert entry["pid"] == own_engine.process.pid
    assert Path(entry["checkpoint"]).is_dir()
    assert entry["recipe_options"]["ctx_size"] == 512
    # Issue 11: the engine's memory and its budget, measured here (Linux: /proc, mincore).
    memory = health["memory"]
    assert {"rss_bytes", "start_rss_bytes", "weights_bytes", "batch_buffer_bytes",
            "batch_buffer_resident_bytes", "batch_rows", "parked_kv_bytes",
            "host_pool_bytes", "budget_bytes"} <= set(memory)
    assert memory["rss_bytes"] > memory["weights_bytes"] > 100 * 2**20
    assert memory["batch_buffer_bytes"] == memory["batch_rows"] * 512 * 46_080  # fp32 rows
    assert memory["budget_bytes"] >= memory["rss_bytes"]
    assert _get(own_engine, "stats")["memory"].keys() == memory.keys()


def test_models_list_and_show_all(own_engine: RunningServer) -> None:
    listed = _get(own_engine, "models")
    assert listed["object"] == "list"
    model = next(m for m in listed["data"] if m["id"] == MODEL)
    assert {"id", "created", "object", "owned_by", "checkpoint", "recipe", "size",
            "downloaded", "suggested", "labels"} <= set(model)
    assert model["object"] == "model" and model["downloaded"] is True
    every = _get(own_engine, "models?show_all=true")
    assert {m["id"] for m in listed["data"]} <= {m["id"] for m in every["data"]}
    assert _get(own_engine, f"models/{MODEL}")["id"] == MODEL
    # Ids match whatever case users type them in.
    assert _get(own_engine, f"models/{MODEL.upper()}")["id"] == MODEL


def test_load_clamps_ctx_size_and_reports_it_and_same_load_does_not_reload(
        own_engine: RunningServer) -> None:
    before = _loaded(own_engine)
    loaded = _post(own_engine, "load", {"model_name": MODEL, "ctx_size": 65536})
    assert loaded["status"] == "success" and loaded["model_name"] == MODEL
    assert {"checkpoint", "recipe"} <= set(loaded)
    entry = _loaded(own_engine)
    assert entry["recipe_options"]["ctx_size"] == MODEL_MAX_CONTEXT
    assert entry["load_number"] == before["load_number"] + 1
    # GAIA loads before every chat with the same options: nothing reloads.
    again = _post(own_engine, "load", {"model_name": MODEL, "ctx_size": 65536,
                                       "llamacpp_args": "--parallel 2", "save_options": True})
    assert again["reloaded"] is False
    assert _loaded(own_engine)["load_number"] == entry["load_number"]
    assert _loaded(own_engine)["loaded_at"] == entry["loaded_at"]
    # A load naming only the model keeps the options in effect.
    _post(own_engine, "load", {"model_name": MODEL})
    assert _loaded(own_engine)["load_number"] == entry["load_number"]
    # Different options reload.
    smaller = _post(own_engine, "load", {"model_name": MODEL, "ctx_size": 512, "threads": 1})
    assert smaller["reloaded"] is True
    entry = _loaded(own_engine)
    assert entry["recipe_options"]["ctx_size"] == 512
    assert entry["recipe_options"]["threads"] == 1


def test_load_errors(own_engine: RunningServer) -> None:
    assert _post(own_engine, "load", {"model_name": "no-such-model"}, 404)["error"]["code"] \
        == "model_not_found"
    assert _post(own_engine, "load", {"ctx_size": 1024}, 400)["error"]["param"] == "model_name"
    assert _post(own_engine, "load", {"model_name": MODEL, "provider": "NoSuchProvider"},
                 400)["error"]["param"] == "provider"


def test_unload_then_a_request_loads_on_demand(own_engine: RunningServer) -> None:
    assert _post(own_engine, "unload", {"model_name": "other-model"}, 404)["error"]
    assert _post(own_engine, "unload", {"model_name": MODEL})["status"] == "success"
    assert _get(own_engine, "health")["model_loaded"] is None
    assert _get(own_engine, "health")["all_models_loaded"] == []
    assert _post(own_engine, "unload", None, 404)["error"]["code"] == "model_not_loaded"
    answer = _post(own_engine, "chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert answer["usage"]["completion_tokens"] == 2
    assert _get(own_engine, "health")["model_loaded"] == MODEL
    gone = _post(own_engine, "unload")
    assert gone == {"status": "success", "message": "All models unloaded successfully"}
    _post(own_engine, "load", {"model_name": MODEL, "ctx_size": 512})


def test_stats_after_a_generation(own_engine: RunningServer) -> None:
    answer = _post(own_engine, "completions", {"model": MODEL, "prompt": "One, two, three,",
                                               "max_tokens": 5, "temperature": 0})
    stats = _get(own_engine, "stats")
    for field in ("time_to_first_token", "tokens_per_second", "input_tokens", "output_tokens",
                  "prompt_tokens", "cache_tokens"):
        assert isinstance(stats[field], int | float), field
    assert stats["input_tokens"] == answer["usage"]["prompt_tokens"]
    assert stats["output_tokens"] == 5
    assert stats["prompt_tokens"] + stats["cache_tokens"] == stats["input_tokens"]
    assert stats["time_to_first_token"] > 0
    assert isinstance(stats["engine"], dict) and stats["engine"]


def test_system_info_and_live(own_engine: RunningServer) -> None:
    info = _get(own_engine, "system-info")
    assert {"OS Version", "Processor", "Physical Memory", "devices"} <= set(info)
    assert info["devices"]["cpu"]["available"] is True
    assert "CPUExecutionProvider" in info["execution_providers"]
    for path in ("/live", "/api/v1/live", "/v1/live"):
        assert httpx.get(own_engine.url + path).json() == {"status": "ok"}
