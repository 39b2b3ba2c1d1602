"""The one-shot GPU check: `bash scripts/gpu_check.sh --out DIR` on a lent device (see main.py)."""
