"""The admin API fuzzed from its own ``/openapi.json`` (schemathesis, property-based):
whatever schemathesis sends, positive bodies and negative ones, no answer is a 5xx, and
every answer has a documented status, a documented content type and a body the document's
schema admits. The controller runs as users run it, ``inferos serve`` in front of the real
embedded engine (a separate ``inferos engine`` process, so that a pinned setting reloads
the engine rather than starting a second one beside it).

Repeatable: hypothesis derandomized, no example database, 30 examples per operation, so CI
draws what passed here (INFEROS_HYPOTHESIS=explore in tests/conftest.py does not reach
these: the settings are fixed below on purpose)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inferos.controller.openapi import build_openapi
from tests.backends import free_port
from tests.engine.engine_process import engine_process, prepared_model
from tests.hostile.serve_process import poll
from tests.serve_child import child_env

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prepared_model()
    folder = tmp_path_factory.mktemp("schemathesis")
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    env = child_env({"INFEROS_INFER_OS_TELEMETRY_DIR": str(folder / "logs")})
    with engine_process(folder, "--ctx-size", "1024") as engine, \
            open(folder / "serve.log", "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "inferos.cli", "serve", "--upstream", engine.url,
             "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            def health() -> dict[str, Any]:
                assert serve.poll() is None, (folder / "serve.log").read_text()
                answer: dict[str, Any] = httpx.get(admin + "/v1/health", timeout=10).json()
                return answer

            poll(health, lambda h: h["status"] == "ok", "serve healthy")
            yield admin
            # The fuzz left the controller serving, and answering its health.
            assert serve.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert httpx.get(admin + "/v1/health", timeout=10).status_code == 200
            # ... and a fuzzed admin API is load, not a hung controller: no stale trip.
            stale = [line for line in (folder / "serve.log").read_text().splitlines()
                     if "controller stale" in line]
            assert not stale, stale[:3]
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(timeout=30)


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid data; those with a body also with invalid data (an
    operation without one has nothing negative to draw)."""
    return [(method.upper(), path, mode)
            for path, methods in build_openapi()["paths"].items()
            for method, operation in methods.items()
            for mode in GenerationMode
            if mode == GenerationMode.POSITIVE or "requestBody" in operation]


# schemathesis.pytest.from_fixture fails under pytest 9 ("'Function' object has no attribute
# '_nodeid'"), so each operation is drawn with its own strategy and hypothesis's @given.
@pytest.mark.parametrize(("method", "path", "mode"), _cases(), ids=str)
def test_admin_api_conforms_to_its_document(admin_url: str, method: str, path: str,
                                            mode: GenerationMode) -> None:
    operation = schemathesis.openapi.from_url(admin_url + "/openapi.json")[path][method]
    seen: list[int] = []

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    def fuzz(case: schemathesis.Case) -> None:
        # Host 127.0.0.1 (the guard's loopback default) comes from the URL; a write's body
        # is sent as application/json, the one type the guard admits and the document names.
        response = case.call_and_validate(checks=CHECKS, timeout=60)
        seen.append(response.status_code)

    fuzz()
    assert seen, "no example was sent"
    if mode == GenerationMode.POSITIVE:
        # Valid data was accepted at least once: the guard did not refuse them all.
        assert any(200 <= status < 300 for status in seen), sorted(set(seen))
    if mode == GenerationMode.POSITIVE and path == "/v1/run-context":
        # Its schema is the validator's whole rule: every body it admits is accepted.
        assert set(seen) == {204}, sorted(set(seen))


def _policy_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_openapi()["paths"]["/v1/policy"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]
    return schema


def _post_policy(admin_url: str, body: dict[str, Any]) -> httpx.Response:
    Draft202012Validator(_policy_schema()).validate(body)  # the document admits it
    return httpx.post(admin_url + "/v1/policy", json=body, timeout=60)


def test_an_integral_float_byte_size_is_accepted(admin_url: str) -> None:
    # What schemathesis found: {"io": {"host_pool_bytes": 2226.0}} matches the document
    # (JSON Schema's "integer" admits 2226.0) and was refused with 400 "expected a size
    # such as 64MiB"; Int settings already took integral floats, byte sizes now do too.
    response = _post_policy(admin_url, {"io": {"host_pool_bytes": 1073741824.0}})
    assert response.status_code == 200, response.text
    health = httpx.get(admin_url + "/v1/health", timeout=10).json()
    assert health["policy"]["io"]["host_pool_bytes"] == 2**30


@pytest.mark.xfail(strict=True, reason=(
    "the document admits a byte-size string beyond the setting's bounds: the string branch "
    "of ByteSize.json_schema is a pattern only (controller/setting_types.py SIZE_PATTERN), "
    "which cannot carry minimum/maximum, so '2TiB' or '0B' validate and the API answers "
    "400 (schemathesis positive data, /v1/policy io.*_pool_bytes)"))
def test_a_byte_size_string_the_document_admits_is_accepted(admin_url: str) -> None:
    response = _post_policy(admin_url, {"io": {"dml_pool_bytes": "2TiB"}})
    assert response.status_code == 200, response.text
