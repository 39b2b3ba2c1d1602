#!/usr/bin/env bash
# Wheels for scripts/gpu_check.py's device run, downloaded here into .whl/ (git-ignored) and carried there.
#
#   bash scripts/gpu_wheels.sh [EXTRA==VERSION ...]
#
# Only what the engine and the check import that the GPU image lacks: structlog (pure Python, py3-none-any).
# The image already has torch, triton, transformers, tokenizers, safetensors, jinja2, tqdm, numpy and pytest;
# never carry those or their dependencies: the device command installs them into a site directory first on
# PYTHONPATH, where they would shadow the image's CUDA builds. The device command (carry: [".whl"]):
#
#   bash scripts/gpu_check.sh --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=(structlog==26.1.0 "$@")
mkdir -p .whl
for spec in "${wheels[@]}"; do  # one version of each: two of the same package stop the whole install there
  name="${spec%%[=<>]*}"
  rm -f .whl/"${name//-/_}"-*.whl .whl/"${name}"-*.whl
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${wheels[@]}"
ls -l .whl
