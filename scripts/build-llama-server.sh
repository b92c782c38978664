#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (what Lemonade's llamacpp recipe runs) once, and caches
# it under ${INFEROS_CACHE:-~/.cache/inferos}/llama-server/<version>/: the binary plus the
# shared libraries it loads, with an rpath of $ORIGIN so it runs from wherever it lies.
#   scripts/build-llama-server.sh          build if the cached binary is missing or broken
# The source is the llama.cpp that llama-cpp-python's sdist vendors, so the server and the
# Python binding run the same kernels. A second run is instant: it only runs `--version`.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${INFEROS_CACHE:-$HOME/.cache/inferos}"
llama_version="0.3.36"
dest="$cache/llama-server/$llama_version"
sdists="$cache/sdists"
# The same portable flags as the wheel (scripts/setup-env.sh says why: GGML_NATIVE picks up
# AMX/AVX-512 that these VMs advertise but trap on). CURL off: models are local files here.
# BUILD_WITH_INSTALL_RPATH gives the build tree's binary an rpath of only $ORIGIN, so the
# copy in the cache finds its libraries beside it and nothing points back into scratch.
cmake_args=(-DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN')
# One source change (see below); a cache built from another recipe is rebuilt.
patches="keepalive-after-stream"
recipe="$llama_version ${cmake_args[*]} $patches"

built() {
  "$dest/llama-server" --version >/dev/null 2>&1 && [ "$(cat "$dest/RECIPE" 2>/dev/null)" = "$recipe" ]
}

if built; then
  exit 0
fi

# Two setups at once would build twice and race on the final move; the second one waits.
mkdir -p "$cache/llama-server" "$sdists"
exec 9>"$cache/llama-server/.lock"
flock 9
if built; then
  exit 0
fi

py=".venv/bin/python"
[ -x "$py" ] || py="${PYTHON:-python3}"
sdist="$sdists/llama_cpp_python-$llama_version.tar.gz"
if [ ! -f "$sdist" ]; then
  echo "setup: downloading the llama-cpp-python $llama_version sdist (76 MB)" >&2
  fetch="$(mktemp -d "$sdists/.fetch-XXXXXX")"
  "$py" -m pip --disable-pip-version-check -q download --no-deps --no-binary :all: \
    "llama-cpp-python==$llama_version" -d "$fetch"
  mv "$fetch"/*.tar.gz "$sdist"
  rm -rf "$fetch"
fi

# Everything is built in a scratch directory beside the cache (same filesystem, so the last
# `mv` is atomic): an interrupted build leaves only scratch, which the trap removes.
work="$(mktemp -d "$cache/llama-server/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "setup: building llama-server from llama.cpp in llama-cpp-python $llama_version" \
  "(7-14 minutes on 2 cores)" >&2
tar -xzf "$sdist" -C "$work"
src="$(echo "$work"/*/vendor/llama.cpp)"

# keepalive-after-stream: llama-server ends every streamed response by returning false from
# cpp-httplib's content provider after sink.done(), which httplib takes for "cancelled": it
# closes the connection it had just advertised as keep-alive. A client that reuses it (the
# proxy's connection pool, aiohttp, httpx) fails its next request: one in two streamed
# requests back to back on one aiohttp session failed here, and a proxied one now and then.
# Returning true once done() has ended the body keeps the connection usable; nothing else
# reads the value. The sed must match exactly once, so a new llama.cpp fails loudly here.
http_cpp="$src/tools/server/server-http.cpp"
if [ "$(grep -c '^ *return has_next;$' "$http_cpp")" != 1 ]; then
  echo "setup: $http_cpp changed; revisit the keepalive-after-stream patch" >&2
  exit 1
fi
sed -i 's|^\( *\)return has_next;$|\1return true; // inferos: done() ended the body; keep-alive|' \
  "$http_cpp"

cmake -S "$src" -B "$work/build" "${cmake_args[@]}" >"$work/cmake.log" 2>&1 \
  || { tail -n 40 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }

stage="$work/stage"
mkdir -p "$stage"
cp -a "$work/build/bin/llama-server" "$work/build/bin/"*.so* "$stage/"
"$stage/llama-server" --version >/dev/null 2>&1 \
  || { echo "setup: the built llama-server does not run:" >&2; "$stage/llama-server" --version; exit 1; }
echo "$recipe" > "$stage/RECIPE"
# The old build (if any) moves into scratch, which the trap removes: at no moment is there
# a half-built cache, and a server still running from the old one keeps its open files.
if [ -e "$dest" ]; then mv -T "$dest" "$work/old"; fi
mv -T "$stage" "$dest"
echo "setup: llama-server cached in $dest" >&2
