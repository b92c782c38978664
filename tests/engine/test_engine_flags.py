"""``inferos engine --max-batch N --no-speculation``: the plain engine of the A/B run's OFF
side (bench/ab_sides.py) is what its flags say: the policy in effect from the start, and
two requests sent together served one after the other, never in one batch."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.engine.engine_process import MODEL, engine_process

pytestmark = pytest.mark.model


def test_a_plain_engine_serves_one_request_at_a_time(smollm2_folder: Path,
                                                     tmp_path: Path) -> None:
    with engine_process(tmp_path, "--ctx-size", "512", "--max-batch", "1",
                        "--no-speculation", "--no-prefix-cache") as server:
        ack = httpx.get(server.url + "/inferos/v1/policy", timeout=60).json()
        assert ack["version"] == 0
        assert ack["applied"]["scheduler.max_batch"] == 1
        assert ack["applied"]["speculation.enabled"] is False
        answers: list[int] = []

        def ask(text: str) -> None:
            answers.append(httpx.post(server.url + "/api/v1/completions", timeout=300, json={
                "model": MODEL, "prompt": text, "max_tokens": 12, "temperature": 0}
            ).status_code)

        threads = [threading.Thread(target=ask, args=(f"Story {i}: once upon a time",))
                   for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200, 200]
        scheduler = httpx.get(server.url + "/api/v1/stats", timeout=60).json()["scheduler"]
        assert scheduler["decode_steps"] > 0
        assert scheduler["batched_steps"] == 0  # no step ever held two rows
        assert scheduler["speculation"]["enabled"] is False


@pytest.mark.parametrize("value", ["0", "17"])
def test_a_max_batch_out_of_range_is_a_configuration_error(value: str) -> None:
    run = subprocess.run([sys.executable, "-m", "inferos.cli", "engine", "--port", "0",
                          "--max-batch", value], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 2, run.stderr
    assert "max-batch: must be from 1 to 16" in run.stderr
