"""Over HTTP, with ``--kv-allow-evict``: a prompt longer than the context is answered (its
least important tokens evicted) instead of refused, and generation runs past the end of
the context; without the flag the same prompt is a 400 that says why."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.engine.engine_process import MODEL, engine_process

LICENCE = Path("/usr/share/common-licenses/Apache-2.0")


def _ask(url: str, max_tokens: int) -> httpx.Response:
    text = LICENCE.read_text()[:2400]
    body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text + "\nSummarize the above."}]}
    return httpx.post(url + "/api/v1/chat/completions", json=body, timeout=300)


def test_a_prompt_longer_than_the_context_is_evicted_not_refused(
        smollm2_folder: Path, tmp_path: Path) -> None:
    with engine_process(tmp_path, "--ctx-size", "256", "--kv-allow-evict") as engine:
        answer = _ask(engine.url, 300)
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        assert usage["prompt_tokens"] > 256
        assert usage["completion_tokens"] >= 1
        stats = httpx.get(engine.url + "/api/v1/stats", timeout=10).json()
        evicted = stats["context_eviction"]
        assert evicted["enabled"] and evicted["evictions"] >= 1 and evicted["evicted_tokens"] > 0
    with engine_process(tmp_path, "--ctx-size", "256") as engine:
        refused = _ask(engine.url, 8)
        assert refused.status_code == 400
        assert "context" in refused.json()["error"]["message"]
