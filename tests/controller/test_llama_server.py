"""Finding the cached llama-server: found where the build script puts it and only when it
runs; the llamacpp backend runs it there and llama-cpp-python's server where it is not, and
the settings read back from either command line are the ones it was started with."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferos.controller.backend_child import (
    llama_cpp_python_launcher,
    llama_server_launcher,
    llamacpp_alias,
    llamacpp_launcher,
    read_llamacpp_argv,
)
from inferos.controller.cache_types import CACHE_TYPES
from inferos.controller.llama_server import (
    LLAMA_CPP_PYTHON_VERSION,
    LlamaServerBinary,
    cache_dir,
    find_llama_server,
)
from inferos.controller.snapshot import BackendSettings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"


def _cached(cache: Path, script: str) -> Path:
    """Test equipment: a stand-in llama-server in the cache layout the build script makes."""
    path = cache / "llama-server" / LLAMA_CPP_PYTHON_VERSION / "llama-server"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_not_built_is_none(tmp_path: Path) -> None:
    assert find_llama_server(tmp_path) is None


def test_a_cached_binary_that_runs_is_found_with_its_build(tmp_path: Path) -> None:
    # what the build from llama-cpp-python's sdist prints (no git history there)
    path = _cached(tmp_path, 'echo "version: 0.5.0-dev (build 1, commit 0c1e570)" >&2\n'
                             'echo "built with GNU 12.2.0 for Linux x86_64" >&2\n')
    found = find_llama_server(tmp_path)
    assert found == LlamaServerBinary(path, "0.5.0-dev (build 1, commit 0c1e570)")
    assert found.describe() == "llama-server 0.5.0-dev (build 1, commit 0c1e570)"


def test_a_cached_binary_that_does_not_run_is_not_built(tmp_path: Path) -> None:
    # what a lost shared library looks like from outside: the loader fails, exit 127
    _cached(tmp_path, 'echo "error while loading shared libraries: libllama.so" >&2\n'
                      "exit 127\n")
    assert find_llama_server(tmp_path) is None


def test_the_cache_is_where_the_setup_scripts_put_it(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFEROS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("INFEROS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "inferos"
    script = SCRIPT.read_text()
    version = re.search(r'^llama_version="([^"]+)"$', script, re.M)
    assert version is not None and version[1] == LLAMA_CPP_PYTHON_VERSION
    assert 'dest="$cache/llama-server/$llama_version"' in script


def test_the_backend_runs_llama_server_where_it_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFEROS_CACHE", str(tmp_path))
    python = llamacpp_launcher("m.gguf", "m")(BackendSettings(), {}, 1234)
    assert python.argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert python.server.startswith("llama-cpp-python")
    path = _cached(tmp_path, 'echo "version: 1 (abc)" >&2\n')
    child = llamacpp_launcher("m.gguf", "m")(BackendSettings(ctx_size=2048), {}, 1234)
    assert child.argv[0] == str(path) and child.health_path == "/health"
    assert child.argv[child.argv.index("-np") + 1] == "8"
    assert child.server == "llama-server 1 (abc)"


BINARY = LlamaServerBinary(Path("/cache/llama-server"), "1 (abc)")
LAUNCHERS = {"llama-server": llama_server_launcher(BINARY, "m.gguf", "smollm2", slots=4),
             "llama-cpp-python": llama_cpp_python_launcher("m.gguf", "smollm2")}


@given(server=st.sampled_from(sorted(LAUNCHERS)),
       ctx_size=st.one_of(st.none(), st.integers(1, 1 << 17)),
       cache_type=st.sampled_from([c.name for c in CACHE_TYPES]),
       threads=st.one_of(st.none(), st.integers(1, 64)))
def test_settings_read_back_from_either_command_line(
        server: str, ctx_size: int | None, cache_type: str, threads: int | None) -> None:
    settings = BackendSettings(ctx_size=ctx_size, cache_type=cache_type, threads=threads)
    argv = LAUNCHERS[server](settings, {}, 4321).argv
    read = read_llamacpp_argv(argv)
    assert read == {"ctx_size": ctx_size or 4096, "cache_type": cache_type,
                    "flash_attn": settings.flash_attn,
                    **({"threads": threads} if threads else {})}
    assert read_llamacpp_argv(argv[1:]) == read  # as describe() shows it
    assert llamacpp_alias(argv) == "smollm2"


def test_a_type_outside_the_table_is_named_not_dropped() -> None:
    assert read_llamacpp_argv(["llama-server", "--cache-type-k", "q5_1"]) == \
        {"cache_type": "q5_1"}
    assert read_llamacpp_argv(["python", "--type_k", "6"]) == {"cache_type": "ggml type 6"}
    assert read_llamacpp_argv(["python", "--type_k", "8", "--type_v", "1"]) == \
        {"cache_type": "K q8_0, V f16"}  # no table type: a change to either shows undone
    assert read_llamacpp_argv(["llama-server", "-fa", "auto", "-c"]) == {}  # nothing known
