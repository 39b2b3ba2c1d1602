"""glibc's allocator in a long-lived process that steps a model: few arenas, large blocks apart, freed pages handed back.

Three ways glibc's defaults let an engine's memory grow with the length of the file rather than with what it holds:
- Each thread that allocates gets an arena of its own (up to eight per core), and a block freed on another thread
  goes back to the arena that made it: a million-line run with the core on threads grew 13 heaps of 64 MiB (~830 MiB)
  of little live data. Two arenas at most.
- A block over the mmap threshold is mapped, and freeing one raises the threshold to its size (up to 32 MiB), so
  from then on a step's activations of a few MiB come from the heap, between the small objects that outlive them;
  the heap fragments and grows step after step (a 100,000-line `pagebatch run`: the core from 673 to 793 MiB and
  climbing; 200,000 lines: 1,153 MiB). A fixed threshold of 1 MiB turns the dynamic one off: blocks of a MiB or
  more are mapped and unmapped whole, and the core stays flat (647-650 MiB to the end).
- Free pages inside a heap stay resident until ``malloc_trim``, which the core calls periodically.

Mapping and unmapping every large block costs page faults: each step faults its activations in again, 4 KiB at a
time (SmolLM2's float32 prefill ran a third slower than on glibc's heap). So the core also gives torch's large CPU
tensors to a block cache (``cache_large_blocks``, kernels/csrc/cpu_block_cache.cpp): mapped in 2 MiB pages, kept
when freed for the next step's tensors of about their size, unmapped with the periodic trim. Large blocks never
enter the heap, and a step reuses the pages the last one faulted in.
Elsewhere than glibc these calls do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
BLOCK_CACHE_BYTES = 256 << 20  # freed large blocks kept for reuse between trims, at most
MATMUL_CACHE_ENTRIES = 64  # compiled matmul shapes oneDNN and ideep each keep (theirs: 1,024)

_block_cache = False  # installed in this process


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


def cache_large_blocks(min_bytes: int = MMAP_THRESHOLD_BYTES, max_cached: int = BLOCK_CACHE_BYTES) -> bool:
    """Torch's CPU tensors of ``min_bytes`` or more from kept mappings from now on (kernels.cpu_block_cache);
    False where the CPU extension cannot be built."""
    global _block_cache
    from pagebatch.kernels import cpu_block_cache

    _block_cache = _block_cache or cpu_block_cache.install(min_bytes, max_cached)
    return _block_cache


def bound_matmul_caches(entries: int = MATMUL_CACHE_ENTRIES) -> None:
    """Keep at most ``entries`` compiled matmuls in oneDNN's primitive cache and in ideep's (torch's bfloat16
    matmuls on CPU). Each caches one per distinct shape, and a step's row count varies with what it schedules, so
    with their default of 1,024 each they held ~470 MiB of the core's heap at a million lines. Both read their
    capacity from the environment at their first matmul: call this before it. A setting already there is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(entries))


def release_free_memory() -> bool:
    """Hand the pages of free chunks in every arena, and the block cache's kept blocks, back to the system (RSS
    falls to what is in use)."""
    if _block_cache:
        from pagebatch.kernels import cpu_block_cache

        cpu_block_cache.empty()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
