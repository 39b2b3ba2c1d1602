"""Packs a scheduled batch into tensors, runs the model over the paged KV cache, returns logits."""
from __future__ import annotations

import torch

from engine.cuda_graphs import DecodeGraphs
from engine.models import DecoderModel, ModelSpec
from engine.request import Request
from engine.scheduler import ScheduledBatch
from kernels import AttentionMetadata


def kv_block_bytes(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * torch.empty((), dtype=dtype).element_size()


def allocate_kv_cache(
    spec: ModelSpec, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Zeroed, not empty: masked-out slots are multiplied by zero attention weights, and 0 * NaN is NaN.
    pool = torch.zeros(spec.num_layers, 2, num_blocks, block_size, spec.num_kv_heads, spec.head_dim, dtype=dtype, device=device)
    return [(pool[i, 0], pool[i, 1]) for i in range(spec.num_layers)]


class ModelRunner:
    def __init__(self, model: DecoderModel, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], block_size: int) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = model.device
        self.decode_graphs: DecodeGraphs | None = None

    def use_decode_graphs(self, max_num_seqs: int, max_model_len: int, scratch_block: int, capture: bool = True) -> None:
        self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, self.block_size, max_num_seqs, max_model_len, scratch_block, capture)

    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[Request]]:
        """Run one step; returns logits for the requests that complete a token this step, and those requests."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        logits_rows: list[int] = []
        sampled: list[Request] = []
        for req, num_new in zip(batch.requests, batch.num_new_tokens):
            start = req.num_computed_tokens
            end = start + num_new
            input_ids.extend(req.token_ids[start:end])
            positions.extend(range(start, end))
            table = req.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(num_new)
            context_lens.append(end)
            if end == req.num_tokens:
                logits_rows.append(len(input_ids) - 1)
                sampled.append(req)
        graphs = self.decode_graphs
        if graphs is not None and len(sampled) == len(query_lens) == len(input_ids) and graphs.padded_size(len(input_ids)):
            tables = [r.block_table for r in batch.requests]
            return graphs.run(input_ids, positions, slots, tables, context_lens), sampled
        max_blocks = max(len(r.block_table) for r in batch.requests)
        tables = [r.block_table + [0] * (max_blocks - len(r.block_table)) for r in batch.requests]
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        dev = self.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_query_len=max(query_lens),
            max_context_len=max(context_lens),
            query_lens_cpu=query_lens,
            context_lens_cpu=context_lens,
        )
        logits = self.model.forward(
            torch.tensor(input_ids, dtype=torch.int64, device=dev),
            torch.tensor(positions, dtype=torch.int64, device=dev),
            meta,
            self.kv_caches,
            torch.tensor(logits_rows, dtype=torch.int64, device=dev),
        )
        return (logits if sampled else None), sampled
