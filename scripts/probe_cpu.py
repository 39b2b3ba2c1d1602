"""Kept so the documented command works: the code is pagebatch.jobs.bench.probe_cpu (also `pagebatch bench probe-cpu`)."""
from pagebatch.jobs.bench.probe_cpu import main

if __name__ == "__main__":
    raise SystemExit(main())
