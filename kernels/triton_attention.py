"""Paged attention for a packed mixed batch (prefill chunks and decodes in one launch).

Each program owns one (sequence, query tile, KV head[, KV split]). Its query rows are
BLOCK_Q tokens x GROUP_PAD query heads of that KV head, so K/V tiles are loaded once per
GQA group and the row block stays >= 16 for tl.dot even for single-token decodes.
With NUM_SPLITS > 1 the context is cut into partitions whose unnormalized partial results
are merged by ``_reduce_splits_kernel`` (triton_attention_reduce.py). A sliding-window layer
(SLIDING) starts each tile at the first key its first query row sees and masks every tile with
both bounds; its partitions cut the window, not the whole context.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.triton_attention_reduce import choose_num_splits, plan_partitions, reduce_splits

_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tiles(
    acc, m_i, l_i, q, k_base, v_base, table_row, q_pos, kv_lo, kv_hi, qk_scale, window,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for start in range(kv_lo, kv_hi, BLOCK_N):
        keys = start + offs_n
        key_ok = keys < kv_hi
        # A KV tile may span several cache blocks: resolve each key's physical block.
        blocks = tl.load(table_row + keys // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        slots = (keys % BLOCK_SIZE).to(tl.int64)
        k_off = blocks * stride_kb + slots * stride_ks
        v_off = blocks * stride_vb + slots * stride_vs
        k_t = tl.load(
            k_base + k_off[None, :] + offs_d[:, None] * stride_kd,
            mask=key_ok[None, :] & d_ok[:, None], other=0.0,
        )
        s = tl.dot(q, k_t.to(q.dtype), input_precision=DOT_PRECISION) * qk_scale
        if CAUSAL:
            visible = (keys[None, :] <= q_pos[:, None]) & key_ok[None, :]
            if SLIDING:
                visible = visible & (keys[None, :] > q_pos[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + v_off[:, None] + offs_d[None, :] * stride_vd,
            mask=key_ok[:, None] & d_ok[None, :], other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr,
    cu_seqlens_q_ptr, context_lens_ptr, block_tables_ptr,
    qk_scale, partition_size, num_heads, window,
    stride_qt, stride_qh, stride_qd, stride_ot, stride_oh, stride_od,
    stride_kb, stride_ks, stride_kh, stride_kd, stride_vb, stride_vs, stride_vh, stride_vd,
    stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2) // NUM_SPLITS
    split = tl.program_id(2) % NUM_SPLITS

    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    t0 = tile * BLOCK_Q
    if t0 >= q_len:
        return
    ctx = tl.load(context_lens_ptr + seq)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    tok = t0 + offs_m // GROUP_PAD
    head = kv_head * GROUP + offs_m % GROUP_PAD
    row_ok = (tok < q_len) & (offs_m % GROUP_PAD < GROUP)
    q_pos = ctx - q_len + tok
    token = (q_start + tok).to(tl.int64)
    q = tl.load(
        q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :], other=0.0,
    )

    # Keys below full_end are visible to every row of the tile (no causal mask needed);
    # keys in [full_end, kv_end) need the per-row causal mask.
    kv_end = ctx - q_len + tl.minimum(t0 + BLOCK_Q, q_len)
    full_end = ((ctx - q_len + t0 + 1) // BLOCK_N) * BLOCK_N
    first = 0
    if SLIDING:  # no row of the tile sees a key before its first row's window
        first = tl.maximum(ctx - q_len + t0 - window + 1, 0)
    if NUM_SPLITS == 1:
        lo = first
        hi = kv_end
    else:
        lo = first + split * partition_size
        hi = tl.minimum(lo + partition_size, kv_end)
        if split == NUM_SPLITS - 1:
            hi = kv_end  # never drop keys if max_context_len undercounted

    k_base = k_cache_ptr + kv_head.to(tl.int64) * stride_kh
    v_base = v_cache_ptr + kv_head.to(tl.int64) * stride_vh
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # The running max starts finite so a row with no visible key in a tile never computes -inf - -inf.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if SLIDING:
        acc, m_i, l_i = _attend_tiles(
            acc, m_i, l_i, q, k_base, v_base, table_row, q_pos, lo, hi, qk_scale, window,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            BLOCK_SIZE, BLOCK_N, BLOCK_D, HEAD_DIM, True, True, DOT_PRECISION,
        )
    else:
        acc, m_i, l_i = _attend_tiles(
            acc, m_i, l_i, q, k_base, v_base, table_row, q_pos, lo, tl.minimum(hi, full_end), qk_scale, window,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            BLOCK_SIZE, BLOCK_N, BLOCK_D, HEAD_DIM, False, False, DOT_PRECISION,
        )
        acc, m_i, l_i = _attend_tiles(
            acc, m_i, l_i, q, k_base, v_base, table_row, q_pos, tl.maximum(lo, full_end), hi, qk_scale, window,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            BLOCK_SIZE, BLOCK_N, BLOCK_D, HEAD_DIM, True, False, DOT_PRECISION,
        )

    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(
            out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :] * stride_od,
            out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :],
        )
    else:
        part = (token * num_heads + head) * NUM_SPLITS + split
        tl.store(part_m_ptr + part, m_i, mask=row_ok)
        tl.store(part_l_ptr + part, l_i, mask=row_ok)
        tl.store(
            part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc,
            mask=row_ok[:, None] & d_ok[None, :],
        )


def paged_attention_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    num_splits: int | None = None,
    block_n: int | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Causal paged attention of packed queries [T, H, D]; ``num_splits=None`` picks split-KV by heuristic.

    ``block_n`` (keys per tile) is exposed for tests; it must be a power of two >= 16. ``window``: a
    sliding-window layer's (a query at position p sees keys p - window < key <= p).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(f"cache shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not match q {tuple(q.shape)}")
    out = torch.empty_like(q)
    num_seqs = meta.cu_seqlens_q.shape[0] - 1
    if num_tokens == 0 or num_seqs == 0:
        return out

    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    decode = meta.max_query_len <= 1
    block_m = max(16 if decode else 64, group_pad)
    block_q = block_m // group_pad
    block_d = max(16, triton.next_power_of_2(head_dim))
    if block_n is None:
        # fp32 tiles (and head dims > 128) take twice the shared memory: halve the KV tile.
        block_n = 64 if block_d <= 128 and q.element_size() <= 2 else 32
    # The keys one tile can see: the whole context, or a window (plus the tile's extra query rows)
    span = meta.max_context_len if not window else min(meta.max_context_len, window + block_q - 1)
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, meta.max_query_len, span, q.device)
    partition, num_splits = plan_partitions(span, num_splits, block_n)

    if num_splits > 1:
        part_acc = torch.empty(num_tokens, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_m = torch.empty(num_tokens, num_heads, num_splits, dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused by the kernel when NUM_SPLITS == 1

    grid = (triton.cdiv(max(meta.max_query_len, 1), block_q), num_seqs, num_kv_heads * num_splits)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, part_acc, part_m, part_l,
        meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
        scale * _LOG2E, partition, num_heads, window or 0,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(), meta.block_tables.stride(0),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=block_d, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, NUM_SPLITS=num_splits, SLIDING=bool(window),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if block_m * block_d <= 64 * 128 else 8,
    )
    if num_splits > 1:
        reduce_splits(part_acc, part_m, part_l, out)
    return out
