"""Mixture-of-experts MLP for CPU: the experts spread over the threads, each expert's whole MLP on one thread.

``fused_moe`` has the signature and semantics of ``kernels.reference.fused_moe``. The assignments are grouped by
expert as the reference groups them; the C++ op ``expert_mlp`` (``kernels/csrc/cpu_moe.cpp``) then runs every expert
that received rows (gate/up GEMM, gated activation, down GEMM, routing weights) with the experts divided among the
threads, instead of splitting each small GEMM across all of them. Without the extension, or for an activation or
dtype it does not take, the reference runs.
"""
from __future__ import annotations

import torch

from pagebatch.kernels import reference
from pagebatch.kernels.cpu_extension import load

_ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """Same contract as ``kernels.reference.fused_moe``: x [T, H], w13 [E, 2I, H], w2 [E, H, I], [T, K] routing."""
    ext = load() if x.device.type == "cpu" else None
    if ext is None or activation not in _ACTIVATIONS or not (x.dtype == w13.dtype == w2.dtype):
        return reference.fused_moe(x, w13, w2, topk_weights, topk_ids, activation)
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    if num_tokens == 0:
        return x.new_zeros(num_tokens, hidden)
    flat = topk_ids.reshape(-1)
    order = flat.argsort(stable=True)  # assignment rows grouped by expert
    ends = torch.bincount(flat, minlength=w13.shape[0]).cumsum(0)
    rows = x.index_select(0, order // top_k)
    weights = topk_weights.reshape(-1).index_select(0, order)
    out = ext.expert_mlp(rows, w13, w2, ends, weights, _ACTIVATIONS[activation])
    per_assignment = torch.empty_like(out)
    per_assignment[order] = out
    return per_assignment.view(num_tokens, top_k, hidden).sum(dim=1)
