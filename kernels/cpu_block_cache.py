"""Large CPU blocks kept mapped for reuse (``kernels/csrc/cpu_block_cache.cpp``), for a process that steps a model.

``install`` makes it torch's CPU allocator for the rest of the process: allocations of ``min_bytes`` or more come
from whole 2 MiB-aligned mappings, and freed ones, up to ``max_cached`` bytes, are kept for the next allocation of
about their size; smaller ones still go to malloc. ``empty`` unmaps what is kept. Tensors made before ``install``
keep the allocator that made them. Without the C++ extension these do nothing and say so.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagebatch.kernels.cpu_extension import load


@dataclass(frozen=True)
class BlockCacheBytes:
    cached: int  # freed blocks kept mapped for reuse
    live: int  # blocks in tensors now


def install(min_bytes: int, max_cached: int) -> bool:
    """Torch's CPU allocator from now on (False where the extension is unavailable: nothing changed)."""
    ext = load()
    if ext is None:
        return False
    ext.install_block_cache(min_bytes, max_cached)
    return True


def empty() -> int:
    """Unmap every kept block; the bytes released (0 without the extension)."""
    ext = load()
    return 0 if ext is None else int(ext.empty_block_cache())


def usage() -> BlockCacheBytes:
    ext = load()
    cached, live = ext.block_cache_bytes() if ext is not None else (0, 0)
    return BlockCacheBytes(int(cached), int(live))
