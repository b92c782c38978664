"""pull, delete, halt and log-level on an engine of its own (real SmolLM2), whose models
folder is a copy (hard links) of the prepared model, so deleting and pulling again
touch nothing else."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL, engine_process, named_sse_events

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def own_engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[RunningServer, Path]]:
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(smollm2_folder, models / smollm2_folder.name, copy_function=os.link)
    with engine_process(tmp_path_factory.mktemp("mgmt"), "--ctx-size", "512",
                        env={"INFEROS_MODELS_DIR": str(models)}) as server:
        yield server, models


def _post(server: RunningServer, path: str, body: dict[str, Any] | None = None,
          **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/{path}", json=body or {}, timeout=600, **kwargs)


def test_pull_refuses_what_it_cannot_prepare(own_engine: tuple[RunningServer, Path]) -> None:
    server, _ = own_engine
    unknown = _post(server, "pull", {"model_name": "Qwen3-0.6B-GGUF"})
    assert unknown.status_code == 404
    assert "pull is not available for 'Qwen3-0.6B-GGUF'" in unknown.json()["error"]["message"]
    register = _post(server, "pull", {"model_name": "user.X", "checkpoint": "a/b",
                                      "recipe": "llamacpp"})
    assert register.status_code == 400
    assert _post(server, "pull", {}).status_code == 400


def test_pull_of_a_prepared_model_completes_at_once(
        own_engine: tuple[RunningServer, Path]) -> None:
    server, _ = own_engine
    plain = _post(server, "pull", {"model_name": MODEL})
    assert plain.json() == {"status": "success", "message": f"Installed model: {MODEL}"}
    streamed = _post(server, "pull", {"model_name": MODEL, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = named_sse_events(streamed.text)
    assert events[-1] == ("complete", {"file_index": 3, "total_files": 3, "percent": 100})
    assert events[-2][0] == "progress" and events[-2][1]["percent"] == 100


def test_log_level(own_engine: tuple[RunningServer, Path]) -> None:
    server, _ = own_engine
    assert _post(server, "log-level", {"level": "debug"}).json() == \
        {"status": "success", "level": "debug"}
    assert "log level set to debug" in server.log()
    bad = _post(server, "log-level", {"level": "loud"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "level"
    # The level is applied: at error, a generation's info line is not written; at info, it is
    hi = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert _post(server, "log-level", {"level": "error"}).status_code == 200
    before = server.log().count("completion_tokens=")
    assert _post(server, "chat/completions", hi).status_code == 200
    assert server.log().count("completion_tokens=") == before
    assert _post(server, "log-level", {"level": "info"}).status_code == 200
    assert _post(server, "chat/completions", hi).status_code == 200
    assert server.log().count("completion_tokens=") == before + 1


def test_delete_then_pull_prepares_it_again_with_progress(
        own_engine: tuple[RunningServer, Path]) -> None:
    server, models = own_engine
    assert _post(server, "delete", {"model_name": "nope"}).status_code == 404
    deleted = _post(server, "delete", {"model_name": MODEL})
    assert deleted.json() == {"status": "success", "message": f"Deleted model: {MODEL}"}
    assert list(models.iterdir()) == []
    listed = httpx.get(f"{server.url}/api/v1/models", timeout=10).json()["data"]
    assert listed == []
    assert httpx.get(f"{server.url}/api/v1/health", timeout=10).json()["model_loaded"] is None
    chat = _post(server, "chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "Hi"}]})
    assert chat.status_code == 404
    assert _post(server, "delete", {"model_name": MODEL}).status_code == 404
    # pull prepares it again (the real preparation, ~1 minute), step by step
    pulled = _post(server, "pull", {"model_name": MODEL, "stream": True})
    events = named_sse_events(pulled.text)
    steps = [data["file"] for kind, data in events if kind == "progress"]
    assert steps[0] == "GGUF -> transformers" and "transformers -> ONNX" in steps
    percents = [data["percent"] for kind, data in events if kind == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100
    assert events[-1][0] == "complete"
    answer = _post(server, "chat/completions", {"model": MODEL, "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200  # loaded on demand from the folder pull prepared


def test_halt_stops_the_engine(smollm2_folder: Path, tmp_path: Path) -> None:
    with engine_process(tmp_path, "--ctx-size", "256") as server:
        answer = _post(server, "halt")
        assert answer.json()["status"] == "success"
        assert server.process.wait(timeout=30) == 0
