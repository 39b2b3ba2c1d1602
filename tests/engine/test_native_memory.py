"""glibc's allocator settings of the engine's processes (engine/native_memory.py), each probed in a fresh interpreter."""
import ctypes.util
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from pagebatch.engine.native_memory import MMAP_THRESHOLD_BYTES, limit_arenas

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert limit_arenas(map_from=MMAP_THRESHOLD_BYTES)
first = bytearray(2 * MMAP_THRESHOLD_BYTES)
del first  # freeing a mapped block raises glibc's dynamic threshold to its size
second = bytearray(2 * MMAP_THRESHOLD_BYTES)
print("mapped" if libc.mallinfo2().hblkhd >= len(second) else "heap")
"""


def probe(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so.6" not in (ctypes.util.find_library("c") or ""),
                    reason="glibc only")
def test_a_fixed_threshold_keeps_a_step_sized_block_out_of_the_heap():
    """A step's activations of a few MiB stay mapped with the engine's setting; glibc's default would put the
    second one in the heap, where the heap fragments around them over a long file."""
    assert probe("default") == "heap"
    assert probe("fixed") == "mapped"


CACHE_PROBE = """
import torch
from pagebatch.engine.native_memory import cache_large_blocks, release_free_memory
from pagebatch.kernels import cpu_block_cache

assert cache_large_blocks()
activation = torch.randn(2048, 1536)  # a step's activation of a small model
del activation
assert cpu_block_cache.usage().cached >= 2048 * 1536 * 4  # kept for the next step
release_free_memory()  # the core's periodic trim
assert cpu_block_cache.usage().cached == 0
print("ok")
"""


def test_the_periodic_trim_unmaps_the_blocks_kept_for_reuse():
    from pagebatch.kernels import cpu_extension

    if not cpu_extension.available():
        pytest.skip("the CPU extension cannot be built here")
    done = subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


MATMUL_PROBE = """
import re, sys
import torch
from pagebatch.engine.native_memory import bound_matmul_caches

def heap_mib():
    found = re.search(r"\\[heap\\]\\n(?:.*\\n)*?Rss:\\s+(\\d+)", open("/proc/self/smaps").read())
    return int(found.group(1)) / 1024 if found else 0.0

if sys.argv[1] == "bounded":
    bound_matmul_caches(8)  # before the first matmul, as the core calls it
weights = [torch.randn(out, 64, dtype=torch.bfloat16) for out in (128, 512)]
before = heap_mib()
for rows in range(1, 301):  # a step's row count varies: one compiled matmul per shape
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    for w in weights:
        torch.nn.functional.linear(x, w)
print(heap_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_bounded_matmul_caches_keep_varying_step_shapes_from_growing_the_heap():
    def growth(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", MATMUL_PROBE, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return float(done.stdout.strip())

    bounded = growth("bounded")
    assert bounded < 64, f"the heap grew {bounded:.0f} MiB over 300 matmul shapes with the caches bounded"
    # where torch runs bfloat16 matmuls through oneDNN (as on this project's CPUs), the default caches grow it
    print(f"heap growth over 300 shapes: default {growth('default'):.0f} MiB, bounded {bounded:.0f} MiB")
