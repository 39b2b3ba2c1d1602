"""Peak resident memory of named process trees, sampled from /proc (via psutil) while a benchmark runs.

A process's own peak (VmHWM) misses its children, and a tree's peak is not the sum of its members' peaks,
so a background thread sums each tree's current RSS every ``interval_s`` and keeps the largest sum seen.
"""
from __future__ import annotations

import threading
import time

import psutil


# The C++ CPU kernels are compiled on first use (kernels/cpu_extension.py): the compiler's processes, under
# ninja, take over a GiB for a few seconds whatever the file's length. They are not the service's memory.
BUILD_TOOLS = frozenset({"ninja"})


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now, a kernel build's excepted (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    builds = set()
    for proc in members:
        try:
            if proc.name() in BUILD_TOOLS:
                builds.update(p.pid for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            pass
    total = 0
    for proc in members:
        if proc.pid in builds:
            continue
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def child_rss(pid: int) -> dict[str, int]:
    """Resident bytes of each child of a process now, by role: ``core`` for an engine core (a spawned
    multiprocessing child), ``tracker`` for multiprocessing's resource tracker, else the child's name."""
    out: dict[str, int] = {}
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return out
    for proc in children:
        try:
            if proc.name() in BUILD_TOOLS:
                continue
            cmdline = " ".join(proc.cmdline())
            role = ("tracker" if "resource_tracker" in cmdline else "core" if "multiprocessing" in cmdline
                    else proc.name())
            out[role] = out.get(role, 0) + proc.memory_info().rss
        except psutil.Error:
            pass
    return out


class PeakRss:
    """Samples the RSS of each watched process tree until stopped; ``peaks`` maps each name to its peak in bytes."""

    def __init__(self, interval_s: float = 0.1, timeline_s: float = 10.0) -> None:
        self.interval_s, self.timeline_s = interval_s, timeline_s
        self.peaks: dict[str, int] = {}
        # every timeline_s: each tree's RSS then, in MiB (does it grow with the lines done, or level off?), and
        # its children's ("worker.core": the engine core's own)
        self.timeline: list[dict[str, float]] = []
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self.peaks.setdefault(name, 0)
        self._sample(name, pid)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample_all()
        self._stop.set()
        self._thread.join()

    def sample_all(self) -> None:
        with self._lock:
            watched = list(self._pids.items())
        for name, pid in watched:
            self._sample(name, pid)

    def _sample(self, name: str, pid: int) -> None:
        rss = tree_rss(pid)
        with self._lock:
            self.peaks[name] = max(self.peaks.get(name, 0), rss)

    def _run(self) -> None:
        started = next_mark = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.sample_all()
            if time.monotonic() >= next_mark:
                next_mark += self.timeline_s
                with self._lock:
                    watched = list(self._pids.items())
                mark = {name: round(tree_rss(pid) / 2**20, 1) for name, pid in watched}
                for name, pid in watched:
                    mark.update({f"{name}.{role}": round(rss / 2**20, 1) for role, rss in child_rss(pid).items()})
                self.timeline.append({"t": round(time.monotonic() - started), **mark})

    def mib(self) -> dict[str, float]:
        with self._lock:
            return {name: round(peak / 2**20, 1) for name, peak in self.peaks.items()}
