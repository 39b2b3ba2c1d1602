"""Kept so the documented command works: the code is pagebatch.jobs.bench.structured (also `pagebatch bench structured`)."""
from pagebatch.jobs.bench.structured import main

if __name__ == "__main__":
    raise SystemExit(main())
