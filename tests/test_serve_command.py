"""``inferos serve`` as a user runs it: a real process, real sockets, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from tests.backends import free_port


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "inferos.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_health(admin: str, process: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            return httpx.get(admin + "/v1/health", timeout=1).json()
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("no health")


def test_passthrough_flag_and_clean_stop_on_sigterm() -> None:
    port, admin = free_port(), free_port()
    upstream = f"http://127.0.0.1:{free_port()}"
    process = _serve("--upstream", upstream, "--listen", f"127.0.0.1:{port}",
                     "--admin", f"127.0.0.1:{admin}", "--passthrough")
    try:
        health = _wait_health(f"http://127.0.0.1:{admin}", process)
        assert health["status"] == "passthrough" and health["upstream"] == upstream
        # nothing upstream: the client still gets an answer, never a hang
        response = httpx.post(f"http://127.0.0.1:{port}/api/v1/chat/completions", json={})
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_unavailable"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output


def test_configuration_error_names_the_key_and_exits_2(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("upstream:\n  idle_timeout_s: never\n")
    process = _serve("--config", str(config))
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 2
    assert "upstream.idle_timeout_s" in output and "line 2" in output
