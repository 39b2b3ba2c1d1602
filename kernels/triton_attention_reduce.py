"""Split-KV support for paged attention: when to split, how long a partition is, and the merge.

A split program leaves, per query row, its running max ``m`` (log2 domain), its softmax
denominator ``l`` and its unnormalized output ``acc``; the merge rescales every split to the
global max: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

# Splitting pays only when each partition still holds several KV tiles.
MIN_PARTITION_TOKENS = 256
MAX_SPLITS = 16
_CPU_SM_COUNT = 8  # stand-in "SM count" for the interpreter, so the heuristic is testable on CPU


@lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _CPU_SM_COUNT


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_query_len: int, max_context_len: int, device: torch.device
) -> int:
    """Split the context only for decode-only batches whose (seq, KV head) programs leave SMs idle."""
    if max_query_len > 1:
        return 1
    programs = num_seqs * num_kv_heads
    target = 2 * _sm_count(torch.device(device))
    if programs >= target or max_context_len < 2 * MIN_PARTITION_TOKENS:
        return 1
    splits = min(triton.cdiv(target, programs), max_context_len // MIN_PARTITION_TOKENS, MAX_SPLITS)
    return max(splits, 1)


def plan_partitions(max_context_len: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """(keys per split, splits actually needed); partitions are multiples of ``block_n`` to align with KV tiles."""
    if num_splits <= 1:
        return 0, 1
    per_split = triton.cdiv(max(max_context_len, 1), num_splits)
    partition = triton.cdiv(per_split, block_n) * block_n
    return partition, triton.cdiv(max(max_context_len, 1), partition)


@triton.jit
def _reduce_splits_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, num_heads,
    stride_ot, stride_oh, stride_od,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    d_ok = offs_d < HEAD_DIM
    base = (token * num_heads + head) * NUM_SPLITS
    m = tl.load(part_m_ptr + base + offs_s, mask=s_ok, other=float("-inf"))
    l = tl.load(part_l_ptr + base + offs_s, mask=s_ok, other=0.0)
    acc = tl.load(
        part_acc_ptr + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :], other=0.0,
    )
    w = tl.exp2(m - tl.max(m, 0))
    denom = tl.sum(w * l, 0)
    denom = tl.where(denom == 0.0, 1.0, denom)
    out = tl.sum(w[:, None] * acc, 0) / denom
    tl.store(
        out_ptr + token * stride_ot + head * stride_oh + offs_d * stride_od,
        out.to(out_ptr.dtype.element_ty), mask=d_ok,
    )


def reduce_splits(
    part_acc: torch.Tensor, part_m: torch.Tensor, part_l: torch.Tensor, out: torch.Tensor
) -> None:
    """Merge partials [T, H, S, D] / [T, H, S] into ``out`` [T, H, D] in place."""
    num_tokens, num_heads, num_splits, head_dim = part_acc.shape
    _reduce_splits_kernel[(num_tokens, num_heads)](
        part_acc, part_m, part_l, out, num_heads, *out.stride(),
        NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
