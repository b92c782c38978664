"""ONNX Runtime writes no telemetry for Infer-OS: loading the real model and generating a
token leaves nothing under ``~/.cache/Microsoft/DeveloperTools`` (onnxruntime 1.32 writes
``.onnxruntime/onnxruntime.db`` there when it is not told otherwise).

Each case runs in a fresh interpreter with ``HOME`` and ``XDG_CACHE_HOME`` pointed at a
temporary folder, because onnxruntime writes its database when it is first imported, once per
process, and under ``$XDG_CACHE_HOME`` rather than ``~/.cache`` when that is set.

The interpreter gets only a few variables of this process's environment, never all of them:
onnxruntime turns its telemetry off by itself when it sees a CI runner's variables (``CI``,
``GITHUB_ACTIONS``, ``TF_BUILD``, ``JENKINS_URL`` among them, tried by hand), so under CI the
control below wrote nothing and failed, and the checks after it would have passed whatever
Infer-OS did. A user's desktop has none of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

TELEMETRY_DIR = Path(".cache") / "Microsoft" / "DeveloperTools"

GENERATE_ONE_TOKEN = """
import sys
from inferos.engine.runtime import EngineOptions, SamplingParams, load_model
model = load_model(sys.argv[1], EngineOptions(threads=1, ctx_size=256))
events = list(model.generate(model.encode("Hi"), SamplingParams(max_tokens=1)))
assert len(events) == 1
model.close()
"""

PERPLEXITY_SESSION = """
import sys
from pathlib import Path
from inferos.engine import kv_perplexity
kv_perplexity.open_model(Path(sys.argv[1]), 1)
"""


# What a fresh interpreter needs to start and find its packages; nothing that names a runner.
KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def _run(code: str, home: Path, folder: Path, env: dict[str, str] | None = None) -> None:
    environment = {k: os.environ[k] for k in KEPT_VARIABLES if k in os.environ}
    environment.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **(env or {}))
    run = subprocess.run([sys.executable, "-c", code, str(folder)], env=environment,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]


def _written(home: Path) -> list[Path]:
    # The whole temporary home, not only the folder onnxruntime 1.32 uses, so a database that
    # moved elsewhere would still be seen.
    return sorted(p for p in home.rglob("*") if p.is_file())


def test_onnxruntime_alone_does_write_telemetry(tmp_path: Path, smollm2_folder: Path) -> None:
    # The control: without Infer-OS, the same interpreter writes the database, so the test
    # below would see it if Infer-OS let it happen.
    _run("import onnxruntime", tmp_path, smollm2_folder)
    assert (tmp_path / TELEMETRY_DIR / ".onnxruntime" / "onnxruntime.db").exists()


def test_a_generation_writes_no_onnxruntime_telemetry(tmp_path: Path,
                                                      smollm2_folder: Path) -> None:
    _run(GENERATE_ONE_TOKEN, tmp_path, smollm2_folder)
    assert _written(tmp_path) == []


def test_the_quality_calibration_session_writes_none(tmp_path: Path,
                                                     smollm2_folder: Path) -> None:
    _run(PERPLEXITY_SESSION, tmp_path, smollm2_folder)
    assert _written(tmp_path) == []
