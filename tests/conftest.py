"""Fixtures shared by every test folder: real backends, started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.backends import RunningServer, llama_cpp_server

# Property tests draw the same examples on every run, so a submission's CI run repeats what
# passed here; INFEROS_HYPOTHESIS=explore draws new ones (and shrinks any failure found).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("INFEROS_HYPOTHESIS", "repeatable"))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The llama.cpp OpenAI server (llama-cpp-python) on SmolLM2-135M-Instruct."""
    with llama_cpp_server(tmp_path_factory.mktemp("llama")) as server:
        yield server
