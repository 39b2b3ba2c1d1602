"""The bench's peak RSS sampler: a process tree's memory, children included, a kernel build's excluded."""
import subprocess
import sys

from pagebatch.jobs.bench.process_memory import PeakRss

HOLD_64_MIB = "import time; b = bytearray(64 << 20); time.sleep(0.6)"


def test_the_peak_of_a_tree_counts_its_children():
    with PeakRss(interval_s=0.02) as memory:
        parent = subprocess.Popen([sys.executable, "-c",
                                   f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOLD_64_MIB!r}])"])
        memory.watch("tree", parent.pid)
        parent.wait()
    assert memory.peaks["tree"] >= 64 << 20
    assert memory.mib()["tree"] >= 64
