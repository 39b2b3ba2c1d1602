"""glibc's allocator in a long-lived process that steps a model: few arenas, big blocks mapped, freed pages handed back.

Three ways glibc's defaults let an engine's memory grow with the length of the file rather than with what it holds:
- Each thread that allocates gets an arena of its own (up to eight per core), and a block freed on another thread
  goes back to the arena that made it: a million-line run with the core on threads grew 13 heaps of 64 MiB (~830 MiB)
  of little live data. Two arenas at most.
- A block over the mmap threshold is mapped, and freeing one raises the threshold to its size (up to 32 MiB), so
  from then on a step's activations of a few MiB come from the heap, between the small objects that outlive them;
  the heap fragments and grows step after step (a 100,000-line `pagebatch run`: the core from 673 to 793 MiB and
  climbing; 200,000 lines: 1,153 MiB). A fixed threshold of 1 MiB turns the dynamic one off: blocks of a MiB or
  more are mapped and unmapped whole, and the core stays flat (647-650 MiB to the end). It costs a few page faults
  per step (~5-10% of `pagebatch run`'s lines/s with the tiny model, whose steps are mostly overhead).
- Free pages inside a heap stay resident until ``malloc_trim``, which the core calls periodically.
Elsewhere than glibc these calls do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = 2, map_from: int | None = None) -> bool:
    """At most ``arenas`` malloc arenas from now on (call it before the process starts its threads); with
    ``map_from``, every block of that many bytes or more is mapped and unmapped whole (a fixed mmap threshold)."""
    libc = _libc()
    if libc is None:
        return False
    mapped = map_from is None or bool(libc.mallopt(M_MMAP_THRESHOLD, map_from))
    return bool(libc.mallopt(M_ARENA_MAX, arenas)) and mapped


def release_free_memory() -> bool:
    """Hand the pages of free chunks in every arena back to the system (RSS falls to what is in use)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
