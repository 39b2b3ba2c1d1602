#!/usr/bin/env bash
# The device machine's one command (carry: [".whl"], made here by scripts/gpu_wheels.sh):
#
#   bash scripts/gpu_check.sh --out "$OUT" [gpu_check.py options]
#
# The GPU image has torch, triton and transformers but not the project: the carried wheels go into a private
# site directory (--no-deps: nothing may shadow the image's CUDA builds), and the copied tree is made
# importable as pagebatch.* by links to its engine/, kernels/, jobs/ and api/ folders (what the editable
# install maps), so the tree that was carried is the code that runs. The CPU rehearsal is the same command
# with --device cpu --quick (tests/ops/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
site="${PAGEBATCH_GPU_SITE:-/tmp/pagebatch-site}"
mkdir -p "$site/pagebatch"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
for part in api engine jobs kernels; do
  ln -sfn "$PWD/$part" "$site/pagebatch/$part"
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
exec python3 scripts/gpu_check.py "$@"
