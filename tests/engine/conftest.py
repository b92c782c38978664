"""Fixtures of the engine tests: the real model, and engine servers started on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import RunningServer
from tests.engine.engine_process import engine_process, prepared_model


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    return prepared_model()


@pytest.fixture(scope="session")
def engine(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    """One engine server shared by the tests that do not change what it has loaded."""
    with engine_process(tmp_path_factory.mktemp("engine"), "--ctx-size", "1024") as server:
        yield server
