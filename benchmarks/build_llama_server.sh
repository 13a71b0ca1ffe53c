#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the sources vendored in the PyPI sdist of llama-cpp-python, for the
# LLM benchmark's reference (python -m benchmarks.llm --llama-server PATH). CPU only, no network at run time.
#
#   bash benchmarks/build_llama_server.sh [OUT_DIR]      # default OUT_DIR: benchmarks/.cache/llama.cpp
#
# Takes ~8 minutes on 2 cores and uses all of them: do not run it beside benchmarks or tests.
# Needs: pip (the project venv's), cmake, ninja, a C/C++ compiler (Debian: apt-get install cmake ninja-build g++).
# Prints the path of the built binary on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/.cache/llama.cpp}"
version="${LLAMA_CPP_PYTHON_VERSION:-}"   # e.g. 0.3.36; empty = the newest sdist
pip="${PIP:-$here/../.venv/bin/pip}"
[ -x "$pip" ] || pip="python3 -m pip"

for tool in cmake ninja c++; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install cmake ninja-build g++)" >&2; exit 1; }
done

mkdir -p "$out"
cd "$out"
if ! ls llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  $pip download --no-binary llama-cpp-python --no-deps --dest . "llama-cpp-python${version:+==$version}"
fi
sdist="$(ls -1 llama_cpp_python-*.tar.gz | sort -V | tail -n 1)"
src="${sdist%.tar.gz}"
[ -d "$src" ] || tar -xzf "$sdist"
# The sdist vendors llama.cpp under vendor/llama.cpp.
llama="$src/vendor/llama.cpp"
[ -f "$llama/CMakeLists.txt" ] || { echo "no vendored llama.cpp in $sdist" >&2; exit 1; }

cmake -S "$llama" -B "$llama/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF
cmake --build "$llama/build" --target llama-server -j "$(nproc)"
binary="$(cd "$llama/build/bin" && pwd)/llama-server"
"$binary" --version >&2 || true
echo "$binary"
