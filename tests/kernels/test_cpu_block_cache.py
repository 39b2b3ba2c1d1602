"""The large-block CPU allocator (kernels/csrc/cpu_block_cache.cpp), installed in a fresh interpreter per test:
it becomes torch's CPU allocator for the rest of a process."""
import subprocess
import sys

import pytest

from pagebatch.kernels import cpu_extension

pytestmark = pytest.mark.skipif(not cpu_extension.available(), reason="the CPU extension cannot be built here")

PROBE = r"""
import torch
from pagebatch.kernels import cpu_block_cache

MiB = 1 << 20
assert cpu_block_cache.install(min_bytes=MiB, max_cached=64 * MiB)
before = torch.randn(1000, 1000)  # made before: still freed by the allocator that made it
x = torch.randn(3000, 700)  # 8.4 MB: a large block, rounded up to whole 2 MiB pages
address = x.data_ptr()
assert address % (2 * MiB) == 0, "large blocks start on a huge-page boundary"
usage = cpu_block_cache.usage()
assert usage.live >= x.numel() * 4 and usage.live % (2 * MiB) == 0 and usage.cached == 0, usage
expected = (x @ x.T).sum()
del x
assert cpu_block_cache.usage().cached >= 3000 * 700 * 4, "a freed block is kept"
y = torch.empty(2900, 700)  # about the same size: the kept block again
assert y.data_ptr() == address
y.copy_(torch.randn(2900, 700))
live = cpu_block_cache.usage().live
z = torch.empty(300, 700)  # 840 KB, under min_bytes: malloc's, not a block
assert cpu_block_cache.usage().live == live
huge = torch.ones(40 * MiB)  # 160 MiB: over what may be kept; freed, it is unmapped
del huge
assert cpu_block_cache.usage().cached < 64 * MiB
del y, before
released = cpu_block_cache.empty()
assert released >= 3000 * 700 * 4 and cpu_block_cache.usage().cached == 0, released
w = torch.randn(3000, 700)  # mapped afresh after emptying, and arithmetic is unchanged
w2 = w.clone()
assert torch.equal(w, w2) and torch.isfinite(expected)
print("ok")
"""


def test_large_blocks_are_kept_for_reuse_and_unmapped_when_emptied():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
