"""Kept so the documented command works: the code is pagebatch.jobs.bench.gpu_check.main (also `pagebatch bench gpu-check`)."""
from pagebatch.jobs.bench.gpu_check.main import main

if __name__ == "__main__":
    raise SystemExit(main())
