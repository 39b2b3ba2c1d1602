"""Prefill attention for many short fresh prompts at once (CPU): one padded SDPA call per group of similar lengths.

A step of a labeling or embeddings batch prefills dozens of prompts of a few dozen tokens that have nothing
cached before them. Row by row, each costs a gather of its keys from the paged cache and a tiny SDPA call,
per layer: the per-call overhead, not the arithmetic, is the step's cost. Here the fresh chunks (context ==
query: every key is one of this step's rows) are grouped by length so that padding each group to its longest
wastes at most a quarter of it, and each group is one gather of queries, keys and values into a padded
[B, H, L, D] batch, one causal SDPA call and one scatter back. Padding goes at the end of each chunk, so causality
alone keeps it out of every real row's keys; the padded rows' own outputs are never written back.

``plan_packed`` splits a batch's prefill chunks (kernels.reference.plan_prefills) into packed groups and the
rest, once per batch; ``packed_prefill_attention`` computes a group into ``out``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_GROUP = 2  # a lone chunk keeps the per-chunk path: same calls, no padding


@dataclass
class PackedGroup:
    rows: torch.Tensor  # [B * L] packed row of each padded position (padding repeats a chunk's last row)
    slots: torch.Tensor  # [B * L] cache slot of each padded position's key and value
    valid: torch.Tensor  # [n] positions in the padded [B * L] that are real rows
    targets: torch.Tensor  # [n] their packed rows in ``out``
    batch: int
    length: int


def plan_packed(prefills: list[tuple], slot_mapping: torch.Tensor, waste: float = 0.25
                ) -> tuple[list[PackedGroup], list[tuple]]:
    """(groups, the chunks left for the per-chunk path). A chunk qualifies when it has no mask (no cached prefix,
    no window) and so attends exactly its own rows of this step."""
    fresh = [c for c in prefills if c[4] is None and c[1] == c[2]]
    rest = [c for c in prefills if not (c[4] is None and c[1] == c[2])]
    fresh.sort(key=lambda c: c[1])
    groups: list[list[tuple]] = []
    for chunk in reversed(fresh):
        if groups and chunk[1] >= (1 - waste) * groups[-1][0][1]:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    packed = []
    for group in groups:
        if len(group) < MIN_GROUP:
            rest.extend(group)
        else:
            packed.append(_pack(group, slot_mapping))
    return packed, rest


def _pack(group: list[tuple], slot_mapping: torch.Tensor) -> PackedGroup:
    length, device = group[0][1], slot_mapping.device  # the group is sorted longest first
    rows, valid, targets = [], [], []
    for b, (start, q_len, *_rest) in enumerate(group):
        rows.extend(range(start, start + q_len))
        rows.extend([start + q_len - 1] * (length - q_len))
        valid.extend(range(b * length, b * length + q_len))
        targets.extend(range(start, start + q_len))
    rows_t = torch.tensor(rows, dtype=torch.int64, device=device)
    return PackedGroup(rows_t, slot_mapping.index_select(0, rows_t), torch.tensor(valid, device=device),
                       torch.tensor(targets, device=device), len(group), length)


def packed_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: PackedGroup,
                             out: torch.Tensor, scale: float) -> None:
    """out[group's rows] = causal attention of each chunk's queries over its own keys (as written to the cache)."""
    heads, dim = q.shape[1], q.shape[2]
    shape = (group.batch, group.length)
    qg = q.index_select(0, group.rows).view(*shape, heads, dim).transpose(1, 2)
    kg = k_cache.reshape(-1, *k_cache.shape[2:]).index_select(0, group.slots).view(*shape, *k_cache.shape[2:])
    vg = v_cache.reshape(-1, *v_cache.shape[2:]).index_select(0, group.slots).view(*shape, *v_cache.shape[2:])
    o = F.scaled_dot_product_attention(qg, kg.transpose(1, 2), vg.transpose(1, 2), is_causal=True, scale=scale,
                                       enable_gqa=True)
    out.index_copy_(0, group.targets, o.transpose(1, 2).reshape(-1, heads, dim).index_select(0, group.valid))
