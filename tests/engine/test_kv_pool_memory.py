"""The CPU KV pool's memory: zero, writable, alive as long as the tensor, and committed only as it is touched."""
from __future__ import annotations

import gc

import torch

from pagebatch.engine.runner import zeroed_pool

CPU = torch.device("cpu")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_pool_is_zero_and_writable_in_every_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pool = zeroed_pool((3, 2, 5, 16, 2, 8), dtype, CPU)
        assert pool.shape == (3, 2, 5, 16, 2, 8) and pool.dtype == dtype and pool.is_contiguous()
        assert not pool.any()
        pool[1, 0, 4].fill_(2.5)
        assert pool.sum().item() == 2.5 * 16 * 2 * 8


def test_pool_memory_lives_as_long_as_the_tensor():
    view = zeroed_pool((4, 1024), torch.float32, CPU)[2:]  # only a view of the pool survives
    gc.collect()
    view.fill_(7.0)
    gc.collect()
    assert view.sum().item() == 7.0 * 2 * 1024


def test_empty_pool():
    assert zeroed_pool((0, 16, 2, 8), torch.float32, CPU).numel() == 0


def test_a_large_pool_costs_no_memory_until_touched():
    before = _rss_kib()
    pool = zeroed_pool((256, 2**20), torch.float32, CPU)  # 1 GiB
    assert _rss_kib() - before < 64 * 1024
    pool[0].fill_(1.0)  # 4 MiB touched: at most a few huge pages more than that
    assert _rss_kib() - before < 64 * 1024
    assert pool[0].sum().item() == 2**20


def test_a_committed_pool_holds_its_memory_from_the_start():
    """What a service's engine holds at its first request is what it holds at its millionth: the whole pool."""
    before = _rss_kib()
    pool = zeroed_pool((64, 2**20), torch.float32, CPU, commit=True)  # 256 MiB
    assert _rss_kib() - before >= 250 * 1024
    assert not pool.any()
    del pool
    gc.collect()
    assert _rss_kib() - before < 64 * 1024  # and gives it back with the tensor

