"""llama.cpp's own ``llama-server`` (what Lemonade's llamacpp recipe runs), where
``scripts/build-llama-server.sh`` caches it: found here, or None when it is not built.

The script builds it from the llama.cpp that llama-cpp-python's sdist vendors, so it runs
the same kernels as the Python binding, into
``${INFEROS_CACHE:-~/.cache/inferos}/llama-server/<LLAMA_CPP_PYTHON_VERSION>/``: the binary
beside the shared libraries it loads (its rpath is ``$ORIGIN``). A binary counts as built
only when ``--version`` runs, the script's own test: a cache that lost a library, or one
copied from a machine with other CPU features, is not built, and the llamacpp backend falls
back to llama-cpp-python's server rather than failing to start.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LLAMA_CPP_PYTHON_VERSION", "LlamaServerBinary", "cache_dir", "find_llama_server"]

# The sdist the binary is built from; scripts/build-llama-server.sh's llama_version (a test
# holds the two equal). A new version is a new folder, so an old build is never mistaken
# for it.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VERSION_TIMEOUT_S = 10.0
# llama_print_build_info's first line, e.g. "version: 0.5.0-dev (build 1, commit 0c1e570)"
# for the vendored source (no git history), "version: 7430 (7f8ef50c)" for a release.
_BUILD_LINE = re.compile(r"^version:\s*(.+?)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class LlamaServerBinary:
    """A ``llama-server`` that runs, and the llama.cpp build it reports."""

    path: Path
    build: str  # what it says after "version:", e.g. "0.5.0-dev (build 1, commit 0c1e570)"

    def describe(self) -> str:
        return f"llama-server {self.build}"


def cache_dir() -> Path:
    """Where the setup scripts cache slow builds (the wheel, this binary)."""
    configured = os.environ.get("INFEROS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "inferos"


def find_llama_server(cache: Path | None = None) -> LlamaServerBinary | None:
    """The cached ``llama-server`` under ``cache`` (default ``cache_dir()``) when it is
    there and runs; None otherwise."""
    path = (cache or cache_dir()) / "llama-server" / LLAMA_CPP_PYTHON_VERSION / "llama-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    try:
        ran = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if ran.returncode != 0:
        return None
    # It prints its build info on stderr; stdout too in some builds.
    found = _BUILD_LINE.search(ran.stderr + ran.stdout)
    build = found.group(1) if found else "unknown build"
    return LlamaServerBinary(path, build)
