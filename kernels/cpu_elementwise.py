"""RMSNorm and neox rotary embedding for CPU, one pass over each row (``kernels/csrc/cpu_elementwise.cpp``).

Same signatures and semantics as ``kernels.reference.rms_norm`` and ``kernels.reference.rotary_embedding``, and the
same rounding (a bfloat16 or float16 activation is rounded after each op the reference does in its dtype); only the
float32 sum of squares is added in another order. The reference does each in 5-8 torch ops, every one a pass over
the activations: for a small model's step, mostly per-op overhead. Without the extension the reference runs.
"""
from __future__ import annotations

import torch

from pagebatch.kernels import reference
from pagebatch.kernels.cpu_extension import load

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with ``residual``, normalizes x + residual and also returns that sum."""
    ext = load() if x.device.type == "cpu" else None
    if ext is None or x.dtype not in _DTYPES or weight.dtype != x.dtype or (
            residual is not None and (residual.dtype != x.dtype or residual.shape != x.shape)):
        return reference.rms_norm(x, weight, eps, residual)
    if residual is None:
        return ext.rms_norm(x, weight, eps)
    out, summed = ext.add_rms_norm(x, residual, weight, eps)
    return out, summed


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding. cos_sin_cache is [max_pos, head_dim] fp32: cos halves then sin halves."""
    ext = load() if q.device.type == "cpu" else None
    if (ext is None or q.dtype not in _DTYPES or k.dtype != q.dtype or q.dim() != 3 or k.dim() != 3
            or q.stride(-1) != 1 or k.stride(-1) != 1 or cos_sin_cache.dtype != torch.float32):
        return reference.rotary_embedding(positions, q, k, cos_sin_cache)
    q_out, k_out = ext.rotary_neox(positions, q, k, cos_sin_cache)
    return q_out, k_out
