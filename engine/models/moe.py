"""A mixture-of-experts MLP: the router picks each token's top-k experts, the kernel backend's ``fused_moe`` runs them.

Routing is the families' shared recipe: a softmax over all experts in float32, the top k, and (Mixtral always,
Qwen3-MoE and OLMoE when ``norm_topk_prob``) the k weights rescaled to sum to one.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from pagebatch.engine.models.spec import MoeSpec


@dataclass
class MoeWeights:
    router: torch.Tensor  # [E, hidden]
    w13: torch.Tensor  # [E, 2 * I, hidden]: each expert's gate rows, then its up rows
    w2: torch.Tensor  # [E, hidden, I]


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] float32, expert ids [T, k]) of each token."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def moe_mlp(ops: ModuleType, weights: MoeWeights, moe: MoeSpec, x: torch.Tensor, activation: str) -> torch.Tensor:
    topk_weights, topk_ids = route(F.linear(x, weights.router), moe.top_k, moe.renormalize)
    return ops.fused_moe(x, weights.w13, weights.w2, topk_weights.to(x.dtype), topk_ids, activation)
