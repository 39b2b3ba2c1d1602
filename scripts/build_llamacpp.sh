#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize for this CPU, to run beside pagebatch in
# scripts/bench_engine.py (--llama-cpp DIR). The source is the llama.cpp vendored in the llama-cpp-python
# sdist on PyPI (pip is the only network client needed); the build is -march=native (GGML_NATIVE), Release.
#
#     bash scripts/build_llamacpp.sh [DEST]     # prints DEST, the folder holding bin/llama-server
#
# DEST defaults to ~/.cache/pagebatch/llamacpp/<version>; nothing is rebuilt when the binaries are there.
# Takes ~8-11 minutes on 2 cores; needs cmake and a C++ compiler.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="${1:-$HOME/.cache/pagebatch/llamacpp/$VERSION}"
if [[ -x "$DEST/bin/llama-server" && -x "$DEST/bin/llama-quantize" ]]; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$DEST"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$WORK/build" -j"$(nproc)" --target llama-server llama-quantize >&2
mkdir -p "$DEST/bin"
cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-quantize" "$DEST/bin/"
echo "$DEST"
