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


def test_the_timeline_shows_an_engine_core_apart():
    spawn = ("import multiprocessing as mp\nif __name__ == '__main__':\n"
             f"    exec({HOLD_64_MIB!r}.replace('0.6', '0'))\n"
             "    core = mp.get_context('spawn').Process(target=__import__('time').sleep, args=(1.5,))\n"
             "    core.start(); core.join()")
    with PeakRss(interval_s=0.05, timeline_s=0.2) as memory:
        parent = subprocess.Popen([sys.executable, "-c", spawn])
        memory.watch("worker", parent.pid)
        parent.wait()
    cores = [mark["worker.core"] for mark in memory.timeline if "worker.core" in mark]
    assert cores, memory.timeline
    trees = [mark["worker"] for mark in memory.timeline if "worker.core" in mark]
    assert all(0 < core < tree for core, tree in zip(cores, trees))  # the parent's 64 MiB are not the core's
