"""kernels.cpu_attention.paged_attention (C++ decode kernel, blocks read in place) against the reference.

The oracle is kernels.reference.paged_attention run in fp32 on upcast copies of the same inputs.
Cache slots no sequence owns (block 0, which pads the block tables, spare blocks and the tail of
each sequence's last block) are poisoned with large constants, so reading a key outside a
sequence's context shows up as a large error. The kernel is built on first use (tens of seconds
once, then cached); without a compiler these tests skip, and one test checks the fallback.

Tolerances (max abs error, plus the same relative term): fp32 1e-5, fp16 4e-3, bf16 2e-2.
"""
from __future__ import annotations

import logging

import pytest
import torch

from pagebatch.kernels import cpu_attention, reference
from pagebatch.kernels.metadata import AttentionMetadata

TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
K_POISON, V_POISON = 3.0, 50.0
GQA = {1: (3, 3), 3: (9, 3), 4: (8, 2), 8: (8, 1)}  # ratio -> (num_heads, num_kv_heads)

# (context_len, query_len)
DECODE_RAGGED = [(1, 1), (16, 1), (17, 1), (100, 1), (33, 1), (64, 1), (250, 1), (2, 1), (48, 1)]
MIXED = [(37, 37), (50, 1), (21, 5), (1, 1), (32, 11), (96, 1), (24, 8), (15, 1)]

needs_kernel = pytest.mark.skipif(not cpu_attention.available(), reason="CPU attention kernel could not be built")


def make_batch(
    specs: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
    spare_blocks: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random q, poisoned caches holding each sequence's K/V in shuffled blocks, and the metadata."""
    blocks_per_seq = [-(-ctx // block_size) for ctx, _ in specs]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, K_POISON, dtype=dtype)
    v_cache = torch.full(shape, V_POISON, dtype=dtype)
    free = (torch.randperm(num_blocks - 1) + 1).tolist()  # block 0 stays poison: it pads the tables
    tables = torch.zeros(len(specs), max(blocks_per_seq) + 1, dtype=torch.int32)  # +1: padding in every row
    slots = []
    for i, ((ctx, q_len), n) in enumerate(zip(specs, blocks_per_seq)):
        blocks = torch.tensor([free.pop() for _ in range(n)])
        tables[i, :n] = blocks.to(torch.int32)
        pos = torch.arange(ctx)
        flat = blocks[pos // block_size] * block_size + pos % block_size
        k_cache.view(-1, num_kv_heads, head_dim)[flat] = torch.randn(ctx, num_kv_heads, head_dim).to(dtype)
        v_cache.view(-1, num_kv_heads, head_dim)[flat] = torch.randn(ctx, num_kv_heads, head_dim).to(dtype)
        slots.append(flat[ctx - q_len :])
    q_lens, ctx_lens = [q for _, q in specs], [c for c, _ in specs]
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0] + q_lens).cumsum(0).to(torch.int32),
        context_lens=torch.tensor(ctx_lens, dtype=torch.int32),
        block_tables=tables, slot_mapping=torch.cat(slots),
        max_query_len=max(q_lens), max_context_len=max(ctx_lens), query_lens_cpu=q_lens, context_lens_cpu=ctx_lens,
    )
    q = torch.randn(sum(q_lens), num_heads, head_dim).to(dtype)
    return q, k_cache, v_cache, meta


def fresh(meta: AttentionMetadata) -> AttentionMetadata:
    """A copy without the plans the backends cache on the metadata."""
    return AttentionMetadata(
        meta.cu_seqlens_q, meta.context_lens, meta.block_tables, meta.slot_mapping, meta.max_query_len,
        meta.max_context_len, list(meta.query_lens_cpu), list(meta.context_lens_cpu),
    )


def check(specs, gqa: int, head_dim: int, block_size: int, dtype: torch.dtype, window: int | None = None,
          **batch_kw) -> None:
    heads, kv_heads = GQA[gqa]
    q, k_cache, v_cache, meta = make_batch(specs, heads, kv_heads, head_dim, block_size, dtype, **batch_kw)
    scale = head_dim**-0.5
    expected = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), fresh(meta), scale, window)
    out = cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale, window)
    assert out.shape == q.shape and out.dtype == q.dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
    # The plan cached on the metadata is reused by the next layer: same answer.
    torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale, window), out, atol=0, rtol=0)
    if window:  # and a full-attention layer of the same batch gets its own plan, not the window's
        full = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), fresh(meta), scale)
        torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, meta, scale).float(), full,
                                   atol=tol, rtol=tol)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("gqa", [1, 3, 4])
def test_ragged_decode(gqa: int, head_dim: int, dtype: torch.dtype) -> None:
    check(DECODE_RAGGED, gqa, head_dim, 16, dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gqa", [1, 3, 4, 8])
def test_mixed_prefill_decode(gqa: int, dtype: torch.dtype) -> None:
    check(MIXED, gqa, 64, 16, dtype)


@needs_kernel
@pytest.mark.parametrize("ctx", [1, 15, 16, 17, 300, 1024, 1031])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_sequence(ctx: int, dtype: torch.dtype) -> None:
    """One sequence: long contexts are split across threads and merged."""
    check([(ctx, 1)], 3, 64, 16, dtype)


@needs_kernel
@pytest.mark.parametrize("head_dim", [32, 80, 96])
def test_other_head_dims(head_dim: int) -> None:
    check(DECODE_RAGGED, 4, head_dim, 16, torch.float32)


@needs_kernel
@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_block_sizes(block_size: int) -> None:
    check(DECODE_RAGGED, 3, 64, block_size, torch.float32)


@needs_kernel
def test_all_one_token_contexts() -> None:
    check([(1, 1)] * 7, 3, 64, 16, torch.float32)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 4, 32])
@pytest.mark.parametrize("min_split_len", [0, 16, 40])
def test_work_splitting(threads: int, min_split_len: int) -> None:
    """Per-sequence vs per-kv-head items, and contexts split into block-aligned chunks then merged
    (how the work is cut depends on the thread count), all give the reference answer."""
    heads, kv_heads = GQA[3]
    q, k_cache, v_cache, meta = make_batch(DECODE_RAGGED, heads, kv_heads, 64, 16, torch.float32)
    expected = reference.paged_attention(q, k_cache, v_cache, fresh(meta), 0.125)
    n = meta.num_seqs
    out = torch.full_like(q, float("nan"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cpu_attention.decode_attention(
            q, k_cache, v_cache, out, meta.block_tables, torch.arange(n), torch.arange(n), meta.context_lens, 0.125,
            min_split_len=min_split_len,
        )
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("window", [1, 7, 16, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sliding_window(window: int, dtype: torch.dtype) -> None:
    """A sliding-window layer's decodes read only their last `window` keys (the poisoned slots before them too
    would show), windows ending mid-block and longer than short contexts; prefill chunks beside them."""
    check(MIXED + DECODE_RAGGED, 3, 64, 16, dtype, window=window)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 32])
def test_sliding_window_split_across_threads(threads: int) -> None:
    """A long context's window split into chunks (starting mid-block) and merged."""
    heads, kv_heads = GQA[4]
    q, k_cache, v_cache, meta = make_batch([(1031, 1), (300, 1)], heads, kv_heads, 64, 16, torch.float32)
    expected = reference.paged_attention(q, k_cache, v_cache, fresh(meta), 0.125, window=517)
    out = torch.full_like(q, float("nan"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cpu_attention.decode_attention(q, k_cache, v_cache, out, meta.block_tables, torch.arange(2), torch.arange(2),
                                       meta.context_lens, 0.125, min_split_len=16, window=517)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_rejects_out_of_range_indices() -> None:
    q, k_cache, v_cache, meta = make_batch([(20, 1), (3, 1)], 9, 3, 64, 16, torch.float32)
    out = torch.empty_like(q)
    idx = torch.arange(2)
    bad_table = meta.block_tables.clone()
    bad_table[0, 1] = k_cache.shape[0]
    for tables, ctx in [(bad_table, meta.context_lens), (meta.block_tables, torch.tensor([20, 100], dtype=torch.int32))]:
        with pytest.raises(RuntimeError, match="out of range"):
            cpu_attention.decode_attention(q, k_cache, v_cache, out, tables, idx, idx, ctx, 0.125)


@needs_kernel
def test_strided_query_rows() -> None:
    """q as the engine makes it: a view of the fused qkv projection, rows not contiguous."""
    heads, kv_heads, d = 9, 3, 64
    _, k_cache, v_cache, meta = make_batch(MIXED, heads, kv_heads, d, 16, torch.float32)
    qkv = torch.randn(sum(meta.query_lens_cpu), (heads + 2 * kv_heads) * d)
    q = qkv[:, : heads * d].view(-1, heads, d)
    assert not q.is_contiguous()
    expected = reference.paged_attention(q.contiguous(), k_cache, v_cache, fresh(meta), 0.125)
    torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, meta, 0.125), expected, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_cache_views_of_the_engine_pool() -> None:
    """Caches as allocate_kv_cache hands them out: views into one [layers, 2, ...] pool."""
    heads, kv_heads, d = 9, 3, 64
    q, k_cache, v_cache, meta = make_batch(DECODE_RAGGED, heads, kv_heads, d, 16, torch.bfloat16)
    pool = torch.zeros(2, 2, *k_cache.shape, dtype=k_cache.dtype)
    pool[1, 0].copy_(k_cache)
    pool[1, 1].copy_(v_cache)
    expected = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), fresh(meta), 0.125)
    out = cpu_attention.paged_attention(q, pool[1, 0], pool[1, 1], meta, 0.125)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_falls_back_to_reference_without_kernel(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A failed build logs a warning, available() is False, and paged_attention is the reference."""

    def broken_load(*args, **kwargs):
        raise RuntimeError("no compiler here")

    import torch.utils.cpp_extension

    from pagebatch.kernels import cpu_extension

    monkeypatch.setattr(cpu_extension, "_ext", None)
    monkeypatch.setattr(cpu_extension, "_failed", False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_load)
    with caplog.at_level(logging.WARNING, logger="pagebatch.kernels.cpu_extension"):
        assert not cpu_attention.available()
    assert "unavailable" in caplog.text and "no compiler here" in caplog.text
    q, k_cache, v_cache, meta = make_batch(MIXED, 9, 3, 64, 16, torch.float32)
    expected = reference.paged_attention(q, k_cache, v_cache, fresh(meta), 0.125)
    torch.testing.assert_close(cpu_attention.paged_attention(q, k_cache, v_cache, meta, 0.125), expected, atol=0, rtol=0)


@needs_kernel
def test_fp32_queries_over_bf16_cache() -> None:
    """Queries in another dtype than the cache (not produced by the engine today): cast to the cache dtype."""
    q, k_cache, v_cache, meta = make_batch(DECODE_RAGGED, 9, 3, 64, 16, torch.bfloat16)
    q = torch.randn(q.shape)
    expected = reference.paged_attention(q, k_cache.float(), v_cache.float(), fresh(meta), 0.125)
    out = cpu_attention.paged_attention(q, k_cache, v_cache, meta, 0.125)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
