"""Triton paged attention (mixed batches, split-KV) against kernels.reference.paged_attention.

The oracle is the reference run in fp32 on upcast copies of the same inputs, so fp16 results are
checked against the exact answer. Cache slots that no sequence owns (including the tail of each
sequence's last block and block 0, the block-table padding) are poisoned with large constants, so
reading a key outside a sequence's context shows up as a large error.

Tolerances (max abs error, plus the same relative term):
  fp32: 2e-5   fp16: 4e-3   bf16 (GPU only): 2e-2
"""
from __future__ import annotations

import pytest
import torch

from pagebatch.kernels import reference
from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.triton_attention import paged_attention_fwd
from pagebatch.kernels.triton_attention_reduce import choose_num_splits

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
K_POISON, V_POISON = 3.0, 50.0

# (context_len, query_len): the last query_len tokens of the context are this step's queries.
MIXED = [
    (37, 37),  # whole prompt, ends mid-block
    (50, 1),  # decode beside prefill chunks
    (21, 5),  # cached prefix of 2 blocks: queries start on a block boundary, end mid-block
    (32, 11),  # queries start mid-block, end on a block boundary
    (1, 1),  # first token alone
    (24, 8),  # one whole block of queries after a cached prefix
]
DECODE = [(1, 1), (9, 1), (64, 1), (100, 1), (33, 1)]
GQA = {1: (2, 2), 2: (4, 2), 4: (8, 2), 8: (8, 1)}  # ratio -> (num_heads, num_kv_heads)


def make_batch(
    specs: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
    dtype: torch.dtype, device: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, list[torch.Tensor], list[torch.Tensor]]:
    """Random q, poisoned caches holding each sequence's K/V in shuffled blocks, and the metadata."""
    blocks_per_seq = [-(-ctx // block_size) for ctx, _ in specs]
    num_blocks = sum(blocks_per_seq) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, K_POISON, dtype=dtype)
    v_cache = torch.full(shape, V_POISON, dtype=dtype)
    free = (torch.randperm(num_blocks - 1) + 1).tolist()  # block 0 stays poison: it pads the tables
    tables = torch.zeros(len(specs), max(blocks_per_seq), dtype=torch.int32)
    keys, values, slots = [], [], []
    for i, ((ctx, q_len), n) in enumerate(zip(specs, blocks_per_seq)):
        blocks = [free.pop() for _ in range(n)]
        tables[i, :n] = torch.tensor(blocks, dtype=torch.int32)
        k = torch.randn(ctx, num_kv_heads, head_dim).to(dtype)
        v = torch.randn(ctx, num_kv_heads, head_dim).to(dtype)
        for pos in range(ctx):
            k_cache[blocks[pos // block_size], pos % block_size] = k[pos]
            v_cache[blocks[pos // block_size], pos % block_size] = v[pos]
        slots += [blocks[p // block_size] * block_size + p % block_size for p in range(ctx - q_len, ctx)]
        keys.append(k)
        values.append(v)
    q_lens = [q for _, q in specs]
    ctx_lens = [c for c, _ in specs]
    cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(
        cu_seqlens_q=cu.to(device), context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device), slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q_lens), max_context_len=max(ctx_lens), query_lens_cpu=q_lens, context_lens_cpu=ctx_lens,
    )
    q = torch.randn(sum(q_lens), num_heads, head_dim).to(dtype)
    return q.to(device), k_cache.to(device), v_cache.to(device), meta, keys, values


def reference_out(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  window: int | None = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5
    return reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, scale, window)


def check(
    specs: list[tuple[int, int]], gqa: int, head_dim: int, block_size: int, dtype: torch.dtype, device: str,
    num_splits: int | None, block_n: int | None = 16, window: int | None = None,
) -> None:
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 is not exercised under the Triton interpreter")
    num_heads, num_kv_heads = GQA[gqa] if gqa in GQA else (gqa * 2, 2)
    q, k_cache, v_cache, meta, _, _ = make_batch(specs, num_heads, num_kv_heads, head_dim, block_size, dtype, device)
    out = paged_attention_fwd(q, k_cache, v_cache, meta, head_dim**-0.5, num_splits=num_splits, block_n=block_n,
                              window=window)
    assert out.dtype == dtype and out.shape == q.shape
    expected = reference_out(q, k_cache, v_cache, meta, window)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("window", [None, 1, 6, 20])
def test_harness_reference_matches_dense_attention(window: int | None) -> None:
    """The cache builder and the oracle agree with attention computed straight from the dense K/V (with a window:
    the keys p - window < key <= p of the query at position p)."""
    specs = MIXED + [(64, 30)]  # a chunk whose queries' windows start in different blocks
    q, k_cache, v_cache, meta, keys, values = make_batch(specs, 8, 2, 16, 8, torch.float32, "cpu")
    expected = reference_out(q, k_cache, v_cache, meta, window)
    row = 0
    for (ctx, q_len), k, v in zip(specs, keys, values):
        for j in range(q_len):
            visible = ctx - q_len + j + 1
            first = max(0, visible - window) if window else 0
            kk = k[first:visible].repeat_interleave(4, dim=1).transpose(0, 1)  # [H, L, D]
            vv = v[first:visible].repeat_interleave(4, dim=1).transpose(0, 1)
            scores = (q[row][:, None, :] @ kk.transpose(1, 2)).squeeze(1) * 16**-0.5
            dense = (scores.softmax(-1)[:, None, :] @ vv).squeeze(1)
            torch.testing.assert_close(expected[row], dense, atol=1e-5, rtol=1e-5)
            row += 1


@pytest.mark.parametrize("num_splits", [1, 3], ids=["single", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
def test_mixed_batch_head_dim_64(gqa: int, dtype: torch.dtype, num_splits: int, device: str) -> None:
    """Prefill chunks, cached prefixes and decodes in one launch; KV tiles of 16 span two 8-slot blocks."""
    check(MIXED, gqa, 64, 8, dtype, device, num_splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("gqa", [1, 4])
def test_mixed_batch_head_dim_128(gqa: int, dtype: torch.dtype, device: str) -> None:
    """Head dim 128 with cache blocks (32) larger than a KV tile (16)."""
    check(MIXED, gqa, 128, 32, dtype, device, None)


@pytest.mark.parametrize("num_splits", [1, 4], ids=["single", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("gqa", [1, 8])
def test_decode_batch(gqa: int, dtype: torch.dtype, num_splits: int, device: str) -> None:
    """Decode-only batch; with 4 splits the short contexts leave some partitions empty."""
    check(DECODE, gqa, 64, 16, dtype, device, num_splits)


def test_default_tile_longer_than_contexts(device: str) -> None:
    """The production KV tile (64 keys) over contexts shorter and longer than one tile."""
    check(MIXED, 4, 64, 16, torch.float16, device, None, block_n=None)


def test_odd_group_and_head_dim(device: str) -> None:
    """GQA ratio 3 (padded to 4 rows per token) and head dim 80 (padded to 128 lanes)."""
    check(MIXED, 3, 80, 8, torch.float32, device, 2)


@pytest.mark.parametrize("num_splits", [1, 3], ids=["single", "split"])
@pytest.mark.parametrize("window", [5, 24])
def test_sliding_window(window: int, num_splits: int, device: str) -> None:
    """A sliding-window layer: prefill chunks whose rows' windows start in different tiles, decodes beside them,
    windows longer than short contexts; split-KV partitions cut the window."""
    check(MIXED + [(64, 30)], 4, 32, 8, torch.float32, device, num_splits, window=window)


def test_sliding_window_decodes_split_by_heuristic(device: str) -> None:
    """Few long decodes: the heuristic splits the window (not the whole context) into partitions that start
    mid-block, wherever each sequence's window starts."""
    assert choose_num_splits(3, 2, 1, 600, torch.device("cpu")) > 1
    check([(1300, 1), (530, 1), (9, 1)], 4, 64, 16, torch.float16, device, None, block_n=None, window=597)


def test_heuristic_splits_only_long_sparse_decodes() -> None:
    cpu = torch.device("cpu")
    assert choose_num_splits(2, 2, 1, 4096, cpu) > 1
    assert choose_num_splits(2, 2, 7, 4096, cpu) == 1  # prefill or mixed: never split
    assert choose_num_splits(2, 2, 1, 100, cpu) == 1  # short contexts
    assert choose_num_splits(64, 8, 1, 4096, cpu) == 1  # enough programs already


def test_public_entry_splits_long_decodes(device: str) -> None:
    """kernels.triton_ops.paged_attention takes the split-KV path for a few long decodes."""
    from pagebatch.kernels import triton_ops

    specs = [(700, 1), (530, 1)]
    q, k_cache, v_cache, meta, _, _ = make_batch(specs, 4, 1, 64, 16, torch.float16, device)
    assert choose_num_splits(meta.num_seqs, 1, meta.max_query_len, meta.max_context_len, q.device) > 1
    out = triton_ops.paged_attention(q, k_cache, v_cache, meta, 0.125)
    expected = reference.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 0.125)
    torch.testing.assert_close(out.float(), expected, atol=TOL[torch.float16], rtol=TOL[torch.float16])


def test_strided_query_view(device: str) -> None:
    """q as a non-contiguous slice of a fused qkv projection."""
    q, k_cache, v_cache, meta, _, _ = make_batch(MIXED, 4, 2, 64, 8, torch.float32, device)
    qkv = torch.randn(q.shape[0], 8, 64, device=device)
    qkv[:, :4] = q
    view = qkv[:, :4]
    assert not view.is_contiguous()
    out = paged_attention_fwd(view, k_cache, v_cache, meta, 0.125, block_n=16)
    expected = reference.paged_attention(q, k_cache, v_cache, meta, 0.125)
    torch.testing.assert_close(out, expected, atol=TOL[torch.float32], rtol=TOL[torch.float32])


def test_last_split_reaches_the_true_context_end(device: str) -> None:
    """Splits are planned from meta.max_context_len; the last one still runs to each context's end."""
    q, k_cache, v_cache, meta, _, _ = make_batch(DECODE, 4, 2, 64, 16, torch.float32, device)
    expected = reference_out(q, k_cache, v_cache, meta)
    meta.max_context_len = 40  # stale: the longest context is 100
    out = paged_attention_fwd(q, k_cache, v_cache, meta, 0.125, num_splits=2, block_n=16)
    torch.testing.assert_close(out, expected, atol=TOL[torch.float32], rtol=TOL[torch.float32])
