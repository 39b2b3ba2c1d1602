"""Neox-style rotary embedding of q and k (one token per program, all heads at once)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, token, num_heads, stride_st, stride_sh, stride_sd, stride_dt, stride_dh, stride_dd,
    cos, sin, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    ok = (offs_h[:, None] < num_heads) & (offs_d[None, :] < HALF)
    src = src_ptr + token * stride_st + offs_h[:, None] * stride_sh + offs_d[None, :] * stride_sd
    dst = dst_ptr + token * stride_dt + offs_h[:, None] * stride_dh + offs_d[None, :] * stride_dd
    x1 = tl.load(src, mask=ok, other=0.0)
    x2 = tl.load(src + HALF * stride_sd, mask=ok, other=0.0)
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    tl.store(dst, (a * cos - b * sin).to(x1.dtype), mask=ok)
    tl.store(dst + HALF * stride_dd, (b * cos + a * sin).to(x1.dtype), mask=ok)


@triton.jit
def _rotary_kernel(
    pos_ptr, cache_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr, num_q_heads, num_k_heads, stride_cache,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
    stride_qot, stride_qoh, stride_qod, stride_kot, stride_koh, stride_kod,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_ok = offs_d < HALF
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d, mask=d_ok, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d, mask=d_ok, other=0.0)
    # The reference rounds cos/sin to the activation dtype before multiplying.
    cos = cos.to(q_ptr.dtype.element_ty).to(tl.float32)[None, :]
    sin = sin.to(q_ptr.dtype.element_ty).to(tl.float32)[None, :]
    _rotate_heads(q_ptr, q_out_ptr, token, num_q_heads, stride_qt, stride_qh, stride_qd,
                  stride_qot, stride_qoh, stride_qod, cos, sin, HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr, k_out_ptr, token, num_k_heads, stride_kt, stride_kh, stride_kd,
                  stride_kot, stride_koh, stride_kod, cos, sin, HALF, BLOCK_HK, BLOCK_HALF)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``kernels.reference.rotary_embedding``: q [T, H, D], k [T, Hk, D], new tensors out."""
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    head_dim = q.shape[-1]
    if head_dim % 2 or cos_sin_cache.shape[-1] != head_dim:
        raise ValueError(f"cos_sin_cache last dim {cos_sin_cache.shape[-1]} must equal the even head_dim {head_dim}")
    cos_sin_cache = cos_sin_cache.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions, cos_sin_cache, q, k, q_out, k_out, q.shape[1], k.shape[1], cos_sin_cache.stride(0),
        *q.stride(), *k.stride(), *q_out.stride(), *k_out.stride(),
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_HQ=triton.next_power_of_2(q.shape[1]), BLOCK_HK=triton.next_power_of_2(k.shape[1]),
    )
    return q_out, k_out
