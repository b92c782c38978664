"""What Lemonade's clients read beyond generation: CORS for browser UIs, the context
window GAIA reads, and system-info's devices and model storage (real engine)."""

from __future__ import annotations

import httpx
import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import MODEL

pytestmark = pytest.mark.model

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080",
                                    "http://[::1]:5173"])
def test_a_loopback_page_gets_preflight_and_cors_headers(engine: RunningServer,
                                                          origin: str) -> None:
    pre = httpx.options(f"{engine.url}/api/v1/chat/completions",
                        headers={"Origin": origin, **PREFLIGHT}, timeout=30)
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    allowed = pre.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed
    answer = httpx.post(f"{engine.url}/api/v1/chat/completions", headers={"Origin": origin},
                        json={"model": MODEL, "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == origin
    # a stream's headers go out inside its handler: they carry it too
    with httpx.stream("POST", f"{engine.url}/api/v1/chat/completions",
                      headers={"Origin": origin},
                      json={"model": MODEL, "max_tokens": 2, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]},
                      timeout=60) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["access-control-allow-origin"] == origin
        assert any(line.startswith("data: ") for line in streamed.iter_lines())


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "POST"])
def test_a_foreign_page_is_refused_before_any_route(engine: RunningServer,
                                                    method: str) -> None:
    before = httpx.get(f"{engine.url}/api/v1/health", timeout=30).json()["model_loaded"]
    response = httpx.request(method, f"{engine.url}/api/v1/unload",
                             headers={"Origin": "http://evil.example", **PREFLIGHT},
                             json={} if method == "POST" else None, timeout=30)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_origin"
    assert "access-control-allow-origin" not in response.headers
    # the unload did not happen
    assert httpx.get(f"{engine.url}/api/v1/health", timeout=30).json()["model_loaded"] == before


def test_no_origin_means_no_cors_headers(engine: RunningServer) -> None:
    response = httpx.get(f"{engine.url}/api/v1/models", timeout=30)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_models_and_health_say_the_context_window(engine: RunningServer) -> None:
    models = httpx.get(f"{engine.url}/api/v1/models", timeout=30).json()["data"]
    mine = next(m for m in models if m["id"] == MODEL)
    assert mine["max_context_window"] == 8192  # SmolLM2's own, from genai_config.json
    health = httpx.get(f"{engine.url}/api/v1/health", timeout=30).json()
    loaded = health["all_models_loaded"][0]
    assert loaded["max_context_window"] == 8192
    assert loaded["recipe_options"]["ctx_size"] == 1024  # what this engine was started with


def test_system_info_reports_storage_and_absent_devices_as_absent(
        engine: RunningServer) -> None:
    info = httpx.get(f"{engine.url}/api/v1/system-info", timeout=30).json()
    storage = info["model_storage"]
    assert storage["free_bytes"] > 0 and storage["total_bytes"] >= storage["free_bytes"]
    devices = info["devices"]
    assert devices["cpu"]["available"] is True and devices["cpu"]["cores"] >= 1
    for absent in ("amd_npu", "npu", "amd_dgpu", "amd_igpu", "nvidia_dgpu"):
        assert devices[absent]["available"] is False  # no such provider on this machine
    assert devices["amd_gpu"] == [] and devices["nvidia_gpu"] == []
    assert any(p.startswith("onnxruntime==") for p in info["Python Packages"])
