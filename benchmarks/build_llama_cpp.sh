#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the sources vendored in the PyPI llama-cpp-python sdist,
# in a folder outside the repository, and print the binary's path. Idempotent: an existing build
# is reused. Nothing of llama.cpp is ever copied into the repository.
#
#   benchmarks/build_llama_cpp.sh            # -> ~/.cache/skipdecode/llama.cpp/.../llama-server
#   LLAMA_CPP_DIR=/tmp/lc JOBS=4 benchmarks/build_llama_cpp.sh
#
# Env: LLAMA_CPP_DIR (work folder), JOBS (parallel compile jobs, default 1),
#      PIP (pip to download with, default: python3 -m pip), LLAMA_CPP_PYTHON_VERSION (pin).
set -euo pipefail

work="${LLAMA_CPP_DIR:-$HOME/.cache/skipdecode/llama.cpp}"
jobs="${JOBS:-1}"
pip_cmd="${PIP:-python3 -m pip}"
spec="llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}"

existing=$(find "$work" -path '*/build/bin/llama-server' -type f 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ] && [ -x "$existing" ]; then
  echo "$existing"
  exit 0
fi

mkdir -p "$work/sdist"
if ! ls "$work"/sdist/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  echo "downloading the $spec sdist" >&2
  $pip_cmd download --quiet --no-deps --no-binary :all: "$spec" -d "$work/sdist" >&2
fi
tarball=$(ls "$work"/sdist/llama_cpp_python-*.tar.gz | sort | tail -n 1)
src="$work/$(basename "$tarball" .tar.gz)"
[ -d "$src" ] || tar -xzf "$tarball" -C "$work"
llama="$src/vendor/llama.cpp"
[ -f "$llama/CMakeLists.txt" ] || { echo "no vendor/llama.cpp in $tarball" >&2; exit 1; }

echo "configuring $llama (CPU build)" >&2
cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
echo "building llama-server with $jobs job(s)" >&2
cmake --build "$llama/build" --target llama-server -j "$jobs" >&2
binary="$llama/build/bin/llama-server"
[ -x "$binary" ] || { echo "build finished but $binary is missing" >&2; exit 1; }
echo "$binary"
