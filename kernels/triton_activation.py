"""Gated activations over a [T, 2 * I] input with the gate first: SiLU(gate) * up and GELU-tanh(gate) * up."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_SQRT_2_OVER_PI = 0.7978845608028654


@triton.jit
def _act_and_mul_kernel(x_ptr, out_ptr, inter, stride_x, stride_o, GELU_TANH: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < inter
    gate = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + offs, mask=ok, other=0.0)
    g = gate.to(tl.float32)
    if GELU_TANH:
        inner = _SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)
        # tanh(z) = 1 - 2 / (exp(2z) + 1): exact at both ends, where exp over- or underflows
        act = 0.5 * g * (2.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0))
    else:
        act = g / (1.0 + tl.exp(-g))
    # Round the activation to the input dtype before the product, as F.silu(gate) * up does.
    act = act.to(gate.dtype)
    tl.store(out_ptr + row * stride_o + offs, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=ok)


def _act_and_mul(x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, inter)
    if x2.shape[0] == 0 or inter == 0:
        return out
    block = min(triton.next_power_of_2(inter), 1024)
    _act_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](
        x2, out2, inter, x2.stride(0), out2.stride(0), GELU_TANH=gelu_tanh, BLOCK=block,
    )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as ``kernels.reference.silu_and_mul``: [..., 2 * I] -> [..., I]."""
    return _act_and_mul(x, gelu_tanh=False)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as ``kernels.reference.gelu_tanh_and_mul``: [..., 2 * I] -> [..., I]."""
    return _act_and_mul(x, gelu_tanh=True)
