"""Fused mixture-of-experts MLP: a grouped GEMM over the tokens routed to each expert.

The T x K (token, expert) assignments are sorted by expert and each expert's run is padded to a
multiple of BLOCK_M (``align_by_expert``, torch ops on the device, no host sync: the padded length
has a static bound, so the launch shapes depend only on T, K and E and the whole MLP can be captured
in a CUDA graph). One program then owns BLOCK_M rows of a single expert and BLOCK_N output columns:
it gathers its rows of the input, multiplies them by that expert's weight tile by tile and scatters
the result to the rows' assignment slots. Blocks past the last expert's run (the unused part of the
bound) return at once; an expert no token chose owns no block.

Two such launches make the MLP: gate/up ([E, 2I, H]) on the rows of x (assignment a reads token
a // K), then down ([E, H, I]) on the activated rows, scaled by each assignment's routing weight;
the K assignments of a token are summed last.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagebatch.kernels.triton_activation import gelu_tanh_and_mul, silu_and_mul

_ACTIVATIONS = {"silu": silu_and_mul, "gelu_tanh": gelu_tanh_and_mul}


@triton.jit
def _expert_gemm_kernel(
    a_ptr, w_ptr, c_ptr, sorted_ids_ptr, block_expert_ptr, weights_ptr,
    num_assignments, N, K,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_cm, stride_cn,
    A_ROW_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return  # padding beyond the last expert's run
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + offs_m)  # assignment indices; num_assignments marks a padding row
    row_ok = ids < num_assignments
    a_rows = (ids // A_ROW_DIV).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + offs_n[None, :] * stride_wn + k[:, None] * stride_wk,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_N] of W^T
        acc += tl.dot(a, w.to(a.dtype), input_precision=DOT_PRECISION)
    if MUL_WEIGHT:
        acc = acc * tl.load(weights_ptr + ids, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    rows = ids.to(tl.int64)
    tl.store(c_ptr + rows[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_ids, block_expert): the assignment indices grouped by expert, each expert's run padded to a
    multiple of ``block_m`` with the index T * K; and each BLOCK_M block's expert (-1: past the last run).

    sorted_ids has the static length T * K + E * (block_m - 1), rounded up to a multiple of block_m.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    n = flat.numel()
    device = flat.device
    # a scatter-add, not bincount: bincount sizes its output from the data, a host sync a CUDA graph cannot hold
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = flat.argsort(stable=True)
    experts = flat[order]
    rank = torch.arange(n, device=device) - (counts.cumsum(0) - counts)[experts]  # position within its expert's run
    capacity = triton.cdiv(n + num_experts * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((capacity,), n, dtype=torch.int32, device=device)
    sorted_ids[(padded_end - padded)[experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, capacity, block_m, device=device)
    block_expert = torch.searchsorted(padded_end, block_starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert


def _block_m(num_assignments: int, num_experts: int) -> int:
    rows_per_expert = num_assignments / max(num_experts, 1)
    return 16 if rows_per_expert <= 16 else 32 if rows_per_expert <= 32 else 64


def _expert_gemm(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, sorted_ids: torch.Tensor,
                 block_expert: torch.Tensor, weights: torch.Tensor, num_assignments: int, a_row_div: int,
                 mul_weight: bool, block_m: int) -> None:
    n_out, k_in = w.shape[1], w.shape[2]
    block_n = 64 if n_out >= 64 else max(16, triton.next_power_of_2(n_out))
    block_k = 32 if a.element_size() >= 4 else 64
    grid = (block_expert.shape[0], triton.cdiv(n_out, block_n))
    _expert_gemm_kernel[grid](
        a, w, out, sorted_ids, block_expert, weights, num_assignments, n_out, k_in,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        A_ROW_DIV=a_row_div, MUL_WEIGHT=mul_weight, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
    )


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """Same contract as ``kernels.reference.fused_moe``: x [T, H], w13 [E, 2I, H], w2 [E, H, I], [T, K] routing."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_experts, two_inter, _ = w13.shape
    if num_tokens == 0:
        return x.new_zeros(num_tokens, hidden)
    if w13.shape[2] != hidden or w2.shape != (num_experts, hidden, two_inter // 2):
        raise ValueError(f"expert weights {tuple(w13.shape)} / {tuple(w2.shape)} do not fit x {tuple(x.shape)}")
    n = num_tokens * top_k
    block_m = _block_m(n, num_experts)
    sorted_ids, block_expert = align_by_expert(topk_ids, num_experts, block_m)
    weights = topk_weights.reshape(-1).contiguous()
    gate_up = torch.empty(n, two_inter, dtype=x.dtype, device=x.device)
    _expert_gemm(x, w13, gate_up, sorted_ids, block_expert, weights, n, top_k, False, block_m)
    act = _ACTIVATIONS[activation](gate_up)
    out = torch.empty(n, hidden, dtype=x.dtype, device=x.device)
    _expert_gemm(act, w2, out, sorted_ids, block_expert, weights, n, 1, True, block_m)
    return out.view(num_tokens, top_k, hidden).sum(dim=1)
