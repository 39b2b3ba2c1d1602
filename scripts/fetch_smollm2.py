"""Fetch SmolLM2-135M-Instruct as a GGUF file into $PAGEBATCH_CACHE_DIR/models and print its path.

    python scripts/fetch_smollm2.py [--dest PATH]

The code lives in pagebatch.jobs.commands.smollm2 (the demo, the tests and the benchmarks read the same
location); this file is the documented entry point.
"""
import sys

from pagebatch.jobs.commands.smollm2 import main

if __name__ == "__main__":
    sys.exit(main())
