"""Prefill attention for chunks that share cached prefix blocks, computed once per shared prefix (CPU).

When many prompts start with the same instruction, the prefix cache hands every one of them the same physical
blocks, and each step prefills several such rows (a few dozen tokens each, all after the shared blocks). Attending
row by row reads and multiplies the same ~1,000 shared keys once per row in a small SDPA call. Here the chunks whose
block tables start with the same blocks form a group: all their queries attend the shared keys in one flash
attention call (the queries of the GQA heads that share a KV head stacked as more rows), each chunk attends its own
remaining keys (causal) in a small call, and the two partial results are merged through their log-sum-exps. Every
query sits after the shared blocks, so the shared keys need no mask.

``plan_groups`` splits a batch's prefill chunks (kernels.reference.plan_prefills) into groups and the rest, once per
batch; ``grouped_prefill_attention`` computes a group into ``out``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# A group needs at least this many shared blocks and chunks to be worth its two extra calls and the merge.
MIN_SHARED_BLOCKS = 4
MIN_GROUP = 2

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@dataclass
class PrefixGroup:
    shared_table: torch.Tensor  # the shared blocks
    shared_len: int  # tokens in them
    chunks: list[tuple]  # (first row, query length, context length, block table, mask) as plan_prefills makes them


def _common_blocks(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_groups(prefills: list[tuple], block_size: int) -> tuple[list[PrefixGroup], list[tuple]]:
    """Chunks whose tables start with the same blocks (at least MIN_SHARED_BLOCKS, all before each chunk's first
    query), grouped by their first block; the other chunks returned as they are. Chunks with a sliding-window mask
    are never passed here."""
    by_first: dict[int, list[tuple[tuple, list[int]]]] = {}
    rest = []
    for chunk in prefills:
        start, q_len, ctx_len, table, _ = chunk
        usable = (ctx_len - q_len) // block_size  # full blocks before the chunk's first query
        if usable < MIN_SHARED_BLOCKS:
            rest.append(chunk)
            continue
        blocks = table[:usable].tolist()
        by_first.setdefault(blocks[0], []).append((chunk, blocks))
    groups = []
    for members in by_first.values():
        if len(members) < MIN_GROUP:
            rest += [chunk for chunk, _ in members]
            continue
        shared = len(members[0][1])
        for _, blocks in members[1:]:
            shared = min(shared, _common_blocks(members[0][1], blocks))
        if shared < MIN_SHARED_BLOCKS:
            rest += [chunk for chunk, _ in members]
            continue
        chunk0 = members[0][0]
        groups.append(PrefixGroup(chunk0[3][:shared], shared * block_size, [chunk for chunk, _ in members]))
    return groups, rest


def _by_kv_head(x: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[N, H, D] -> [1, Hkv, N * G, D]: the queries of the G heads sharing each KV head as rows of that head."""
    n, h, d = x.shape
    g = h // num_kv_heads
    return x.view(n, num_kv_heads, g, d).transpose(0, 1).reshape(1, num_kv_heads, n * g, d)


def _from_kv_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of _by_kv_head for [1, Hkv, N * G, ...] (D last, or no D)."""
    hkv = x.shape[1]
    rest = x.shape[3:]
    return x[0].reshape(hkv, n, -1, *rest).transpose(0, 1).reshape(n, -1, *rest)


def grouped_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: PrefixGroup,
                              out: torch.Tensor, scale: float) -> None:
    """Write the group's chunks' attention into ``out`` (rows as in ``q`` [T, H, D])."""
    hkv, bs = k_cache.shape[2], k_cache.shape[1]
    rows = torch.cat([torch.arange(start, start + q_len) for start, q_len, *_ in group.chunks])
    qg = q.index_select(0, rows)  # [N, H, D]
    n = qg.shape[0]
    k = k_cache.index_select(0, group.shared_table).flatten(0, 1).transpose(0, 1)[None]  # [1, Hkv, Ls, D]
    v = v_cache.index_select(0, group.shared_table).flatten(0, 1).transpose(0, 1)[None]
    o_shared, lse_shared = _flash(_by_kv_head(qg, hkv), k, v, 0.0, False, scale=scale)
    o_shared, lse_shared = _from_kv_head(o_shared, n), _from_kv_head(lse_shared[..., None], n)  # [N, H, D], [N, H, 1]
    o_own, lse_own = torch.empty_like(o_shared), torch.empty_like(lse_shared)
    offset = 0
    first_block = group.shared_len // bs
    for start, q_len, ctx_len, table, _ in group.chunks:
        own = table[first_block : -(-ctx_len // bs)]
        length = ctx_len - group.shared_len
        ko = k_cache.index_select(0, own).flatten(0, 1)[:length].transpose(0, 1)[None]  # [1, Hkv, Lo, D]
        vo = v_cache.index_select(0, own).flatten(0, 1)[:length].transpose(0, 1)[None]
        qi = _by_kv_head(q[start : start + q_len], hkv)
        # query j (position ctx_len - q_len + j) sees own keys up to length - q_len + j; a KV head's rows are its
        # G heads' rows of query 0, then of query 1, ...: each query's mask row repeats G times
        pos = torch.arange(length)
        visible = pos[None, :] <= (torch.arange(q_len) + length - q_len)[:, None]
        mask = visible.repeat_interleave(qi.shape[2] // q_len, 0)
        o, lse = _flash(qi, ko, vo, 0.0, False, attn_mask=torch.zeros(mask.shape, dtype=q.dtype).masked_fill(
            ~mask, float("-inf")), scale=scale)
        o_own[offset : offset + q_len] = _from_kv_head(o, q_len)
        lse_own[offset : offset + q_len] = _from_kv_head(lse[..., None], q_len)
        offset += q_len
    top = torch.maximum(lse_shared, lse_own)
    w_shared, w_own = (lse_shared - top).exp(), (lse_own - top).exp()
    merged = (o_shared.float() * w_shared + o_own.float() * w_own) / (w_shared + w_own)
    out.index_copy_(0, rows, merged.to(out.dtype))
