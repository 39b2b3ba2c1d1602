"""Paged attention for CPU that reads the decode rows' K/V blocks in place.

``paged_attention`` has the signature and semantics of ``kernels.reference.paged_attention``.
Decode rows (query_len == 1) go to a small C++ kernel (``kernels/csrc/cpu_attention.cpp``) that
walks each sequence's block table and reads the cache blocks where they are, in one pass over
K and one over V, with fp32 softmax and accumulation for every cache dtype (fp32/bf16/fp16). The
reference instead gathers every decode group into a padded copy (index_select) that SDPA then
reads again. Prefill rows (query_len > 1) use the same SDPA path as the reference, except chunks that share
cached prefix blocks with others in the batch: those attend the shared blocks together
(``kernels/shared_prefix_attention.py``); and fresh chunks of similar length, which attend in padded batches
(``kernels/packed_prefill_attention.py``).

The kernel is part of the CPU extension (``kernels/cpu_extension.py``), compiled on first use; if it
cannot be built ``available()`` is False and ``paged_attention`` falls back to the reference. The
engine uses it with ``EngineConfig.kernels="cpu"`` (or "auto" on CPU).

This module serves as the whole CPU backend (the function names of ``kernels.reference``): the
mixture-of-experts MLP is ``kernels.cpu_moe``'s, the other ops are the reference's.
"""
from __future__ import annotations

import torch

from pagebatch.kernels import reference
from pagebatch.kernels.cpu_extension import available, build_seconds, load as _load
from pagebatch.kernels.cpu_moe import fused_moe
from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.reference import gelu_tanh_and_mul, rms_norm, rotary_embedding, silu_and_mul, write_kv
from pagebatch.kernels.packed_prefill_attention import packed_prefill_attention, plan_packed
from pagebatch.kernels.shared_prefix_attention import grouped_prefill_attention, plan_groups

__all__ = [
    "available", "build_seconds", "decode_attention", "fused_moe", "gelu_tanh_and_mul", "paged_attention", "rms_norm",
    "rotary_embedding", "silu_and_mul", "write_kv",
]

# Contexts are split across threads only when (decode sequences x kv heads) is under 4x the
# thread count; each split then keeps at least this many keys.
MIN_SPLIT_LEN = 256


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor, block_tables: torch.Tensor,
    seq_idx: torch.Tensor, row_idx: torch.Tensor, ctx_lens: torch.Tensor, scale: float, min_split_len: int = MIN_SPLIT_LEN,
    window: int | None = None,
) -> None:
    """out[row_idx[i]] = attention of q[row_idx[i]] over the first ctx_lens[i] cached tokens of block_tables[seq_idx[i]]
    (with ``window``, over the last ``window`` of them).

    q/out [T, H, D], caches [num_blocks, block_size, Hkv, D] (same dtype as q), block_tables int32,
    seq_idx/row_idx int64, ctx_lens int32. Needs ``available()``.
    """
    ext = _load()
    if ext is None:
        raise RuntimeError("the CPU paged-attention kernel is not available")
    ext.decode_attention(q, k_cache, v_cache, out, block_tables, seq_idx, row_idx, ctx_lens, scale, min_split_len,
                         window or 0)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries [T, H, D] over each sequence's paged context (as the reference; with
    ``window``, a sliding-window layer's)."""
    ext = _load() if q.device.type == "cpu" else None
    if ext is None:
        return reference.paged_attention(q, k_cache, v_cache, meta, scale, window)
    plan = _plan(meta, k_cache.shape[1], window)
    out = torch.empty_like(q)
    if plan.num_decodes:
        qd, kc, vc = q, k_cache, v_cache
        if q.stride(-1) != 1:
            qd = q.contiguous()
        if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
            kc, vc = k_cache.contiguous(), v_cache.contiguous()
        target = out
        if qd.dtype != kc.dtype:  # the kernel takes one dtype; not a case the engine produces
            qd = qd.to(kc.dtype)
            target = torch.empty_like(qd)
        ext.decode_attention(
            qd, kc, vc, target, plan.block_tables, plan.seq_idx, plan.row_idx, plan.ctx_lens, scale, MIN_SPLIT_LEN,
            window or 0,
        )
        if target is not out:
            out.copy_(target)
    for group in plan.prefix_groups:
        grouped_prefill_attention(q, k_cache, v_cache, group, out, scale)
    for packed in plan.packed:
        packed_prefill_attention(q, k_cache, v_cache, packed, out, scale)
    reference.prefill_attention(q, k_cache, v_cache, plan.prefills, out, scale)
    return out


class _Plan:
    """The decode rows as index lists for the kernel, and the prefills as the reference runs them; once per batch."""

    def __init__(self, meta: AttentionMetadata, block_size: int, window: int | None) -> None:
        q_lens, ctx = meta.query_lens_cpu, meta.context_lens_cpu
        offsets, total = [], 0
        for n in q_lens:
            offsets.append(total)
            total += n
        decodes = [i for i, n in enumerate(q_lens) if n == 1]
        self.num_decodes = len(decodes)
        self.block_tables = meta.block_tables.to(torch.int32)
        if self.block_tables.stride(-1) != 1:
            self.block_tables = self.block_tables.contiguous()
        self.seq_idx = torch.tensor(decodes, dtype=torch.int64)
        self.row_idx = torch.tensor([offsets[i] for i in decodes], dtype=torch.int64)
        self.ctx_lens = torch.tensor([ctx[i] for i in decodes], dtype=torch.int32)
        prefills = reference.plan_prefills(meta, block_size, window)
        # chunks sharing cached prefix blocks attend them together (full attention only: a window masks them)
        self.prefix_groups, self.prefills = plan_groups(prefills, block_size) if window is None else ([], prefills)
        # short fresh prompts (nothing cached before them) in padded batches of similar length
        self.packed, self.prefills = plan_packed(self.prefills, meta.slot_mapping)


def _plan(meta: AttentionMetadata, block_size: int, window: int | None) -> _Plan:
    """The batch's plan for this window (None: full attention), built once per batch and window."""
    plans = getattr(meta, "_cpu_attention_plans", None)
    if plans is None:
        plans = meta._cpu_attention_plans = {}
    plan = plans.get(window)
    if plan is None:
        plan = plans[window] = _Plan(meta, block_size, window)
    return plan
