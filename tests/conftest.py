"""Fixtures shared by every test folder: real backends, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends import RunningServer, llama_cpp_server


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The llama.cpp OpenAI server (llama-cpp-python) on SmolLM2-135M-Instruct."""
    with llama_cpp_server(tmp_path_factory.mktemp("llama")) as server:
        yield server
