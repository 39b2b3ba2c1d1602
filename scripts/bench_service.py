"""Kept so the documented command works: the code is pagebatch.jobs.bench.service (also `pagebatch bench service`)."""
from pagebatch.jobs.bench.service import main

if __name__ == "__main__":
    raise SystemExit(main())
