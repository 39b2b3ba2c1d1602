"""Kept so the documented command works: the code is pagebatch.jobs.bench.kernels (also `pagebatch bench kernels`)."""
from pagebatch.jobs.bench.kernels import main

if __name__ == "__main__":
    raise SystemExit(main())
