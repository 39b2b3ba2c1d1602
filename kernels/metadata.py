"""The description of one packed varlen batch that every attention backend reads."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Sequence i owns query rows cu_seqlens_q[i]:cu_seqlens_q[i+1] of the packed batch.

    Its keys/values live in the paged cache at the blocks block_tables[i, :] and, after this
    step's write, it has context_lens[i] tokens there; its queries are the last
    query_len tokens of that context, so query j may attend keys 0..context_len - query_len + j.
    """

    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64: flat slot (block * block_size + offset) of each query token
    max_query_len: int
    max_context_len: int
    query_lens_cpu: list[int]
    context_lens_cpu: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_cpu)
