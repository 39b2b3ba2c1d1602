"""Kept so the documented command works: the code is pagebatch.jobs.bench.cpu_attention (also `pagebatch bench cpu-attention`)."""
from pagebatch.jobs.bench.cpu_attention import main

if __name__ == "__main__":
    raise SystemExit(main())
