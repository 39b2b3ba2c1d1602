"""Pure-torch implementations of the engine's hot-path operations.

They are the CPU path and the oracle every Triton kernel is tested against.
Shapes: tokens are packed along dim 0 (T tokens); caches are
[num_blocks, block_size, num_kv_heads, head_dim].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagebatch.kernels.metadata import AttentionMetadata


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim; with ``residual``, normalizes x + residual and also returns that sum."""
    if residual is not None:
        x = x + residual
        residual = x
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(dtype)
    return out if residual is None else (out, residual)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding. cos_sin_cache is [max_pos, head_dim] fp32: cos halves then sin halves."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos = torch.cat((cos, cos), dim=-1).to(q.dtype).unsqueeze(1)
    sin = torch.cat((sin, sin), dim=-1).to(q.dtype).unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x is [T, 2 * I] with the gate first; returns silu(gate) * up, [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x is [T, 2 * I] with the gate first; returns gelu(gate) * up (tanh approximation, Gemma's), [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


ACTIVATIONS = {"silu": "silu_and_mul", "gelu_tanh": "gelu_tanh_and_mul"}  # activation -> the op of its gated MLP


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """Mixture-of-experts MLP: sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]).

    x [T, H]; w13 [E, 2 * I, H] (each expert's gate rows, then its up rows); w2 [E, H, I]; topk_weights [T, K]
    (x's dtype) and topk_ids [T, K] (int). Tokens are grouped by expert (one stable sort), each expert
    multiplies its rows at once, and the results are scattered back: no per-token loop.
    """
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    if num_tokens == 0:
        return x.new_zeros(num_tokens, hidden)
    num_experts = w13.shape[0]
    flat = topk_ids.reshape(-1)
    order = flat.argsort(stable=True)  # assignment rows grouped by expert
    counts = torch.bincount(flat, minlength=num_experts)
    rows = x.index_select(0, order // top_k)
    act = globals()[ACTIVATIONS[activation]]
    inter = w2.shape[2]
    # torch's grouped GEMM (CPU: one call for all experts) wants rows whose byte strides are multiples of 16
    aligned = all(n * x.element_size() % 16 == 0 for n in (hidden, inter))
    if x.device.type == "cpu" and aligned and hasattr(F, "grouped_mm"):
        ends = counts.cumsum(0).to(torch.int32)
        h = act(F.grouped_mm(rows, w13.transpose(1, 2), offs=ends))
        out = F.grouped_mm(h, w2.transpose(1, 2), offs=ends)
    else:
        out = torch.empty_like(rows)
        start = 0
        for expert, n in enumerate(counts.tolist()):
            if n:
                part = rows[start : start + n]
                out[start : start + n] = F.linear(act(F.linear(part, w13[expert])), w2[expert])
                start += n
    out = out * topk_weights.reshape(-1).index_select(0, order).unsqueeze(1).to(out.dtype)
    per_assignment = torch.empty_like(out)
    per_assignment[order] = out
    return per_assignment.view(num_tokens, top_k, hidden).sum(dim=1)


def write_kv(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store each token's key/value [T, Hkv, D] at its flat slot in the paged caches."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries [T, H, D] over each sequence's paged context.

    ``window``: a sliding-window layer's; a query at position p then sees keys p - window < key <= p.
    """
    out = torch.empty_like(q)
    plan = _plan(meta, k_cache.shape[1], q.device, window)
    for rows, tables, mask in plan.decode_groups:
        shape = (tables.shape[0], -1, *k_cache.shape[2:])
        k = k_cache.index_select(0, tables.flatten()).view(shape).transpose(1, 2)  # [B, Hkv, L, D]
        v = v_cache.index_select(0, tables.flatten()).view(shape).transpose(1, 2)
        o = F.scaled_dot_product_attention(q[rows].unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[rows] = o.squeeze(2)
    prefill_attention(q, k_cache, v_cache, plan.prefills, out, scale)
    return out


def visible_keys(key_pos: torch.Tensor, query_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Mask [queries, keys]: causal, and within the window when there is one."""
    visible = key_pos[None, :] <= query_pos[:, None]
    if window:
        visible &= key_pos[None, :] > query_pos[:, None] - window
    return visible


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, prefills: list, out: torch.Tensor,
                      scale: float) -> None:
    """Each prefill chunk (start, q_len, ctx_len, block table, mask) by SDPA over its gathered context (the
    table may start past block 0 and ctx_len then counts from its first block)."""
    for start, q_len, ctx_len, table, mask in prefills:
        # 4-D inputs: torch's CPU flash kernel takes them; 3-D ones fall back to the slow math path.
        k = k_cache.index_select(0, table).flatten(0, 1)[:ctx_len].transpose(0, 1)[None]  # [1, Hkv, L, D]
        v = v_cache.index_select(0, table).flatten(0, 1)[:ctx_len].transpose(0, 1)[None]
        qi = q[start : start + q_len].transpose(0, 1)[None]  # [1, H, Q, D]
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True)
        out[start : start + q_len] = o[0].transpose(0, 1)


class _Plan:
    """How the reference splits a batch: decodes in a few padded groups of similar length, prefills one by one.

    Built once per batch and reused by every layer.
    """

    def __init__(self, meta: AttentionMetadata, block_size: int, device: torch.device, window: int | None) -> None:
        offsets = _prefix_sums(meta.query_lens_cpu)
        ctx = meta.context_lens_cpu
        decodes = sorted((i for i, n in enumerate(meta.query_lens_cpu) if n == 1), key=lambda i: ctx[i])
        self.decode_groups = []
        for group in _similar_length_groups(decodes, ctx):
            length = ctx[group[-1]]
            num_blocks = -(-length // block_size)
            index = torch.tensor(group, device=device)
            lens = torch.tensor([ctx[i] for i in group], device=device)
            keys = torch.arange(num_blocks * block_size, device=device)[None, :]
            mask = keys < lens[:, None]
            if window:
                mask &= keys >= lens[:, None] - window
            rows = torch.tensor([offsets[i] for i in group], device=device)
            self.decode_groups.append((rows, meta.block_tables[index, :num_blocks], mask[:, None, None, :]))
        self.prefills = plan_prefills(meta, block_size, window)


def plan_prefills(meta: AttentionMetadata, block_size: int, window: int | None = None) -> list[tuple]:
    """(first row, query length, context length, block table, mask or None) of each prefill chunk.

    With a window, the table starts at the block of the first key any of the chunk's queries sees, and the
    context length counts from there."""
    offsets, ctx, device = _prefix_sums(meta.query_lens_cpu), meta.context_lens_cpu, meta.block_tables.device
    prefills = []
    for i, q_len in enumerate(meta.query_lens_cpu):
        if q_len == 1:
            continue
        ctx_len = ctx[i]
        first_block = max(0, ctx_len - q_len - window + 1) // block_size if window else 0
        first_key = first_block * block_size
        table = meta.block_tables[i, first_block : -(-ctx_len // block_size)]
        mask = None
        if ctx_len != q_len or (window and window < q_len):
            pos_q = torch.arange(ctx_len - q_len, ctx_len, device=device)
            mask = visible_keys(torch.arange(first_key, ctx_len, device=device), pos_q, window)
        prefills.append((offsets[i], q_len, ctx_len - first_key, table, mask))
    return prefills


def _similar_length_groups(order: list[int], lengths: list[int], waste: float = 0.25) -> list[list[int]]:
    """Split indices sorted by length so padding each group to its longest wastes at most ``waste`` of it."""
    groups: list[list[int]] = []
    for i in reversed(order):
        if groups and lengths[i] >= (1 - waste) * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [g[::-1] for g in groups]


def _plan(meta: AttentionMetadata, block_size: int, device: torch.device, window: int | None) -> _Plan:
    """The batch's plan for this window (None: full attention), built once per batch and window."""
    plans = getattr(meta, "_reference_plans", None)
    if plans is None:
        plans = meta._reference_plans = {}
    plan = plans.get(window)
    if plan is None:
        plan = plans[window] = _Plan(meta, block_size, device, window)
    return plan


def _prefix_sums(lengths: list[int]) -> list[int]:
    sums, total = [], 0
    for n in lengths:
        sums.append(total)
        total += n
    return sums
