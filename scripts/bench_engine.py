"""Kept so the documented command works: the code is pagebatch.jobs.bench.engine (also `pagebatch bench engine`)."""
from pagebatch.jobs.bench.engine import main

if __name__ == "__main__":
    raise SystemExit(main())
