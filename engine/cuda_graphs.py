"""CUDA graphs for decode steps: captured once per batch size on a ladder, replayed with padded inputs.

A decode step of a small model is dominated by kernel-launch overhead; replaying a captured graph
removes it. Batches are padded up to the next captured size. Padding rows attend a one-token
context in a scratch block that no request owns, so they never touch live KV.
Only used on CUDA with a kernel backend that declares ``supports_cuda_graphs`` (Triton: its launches
depend on no per-step host values; the attention kernel is captured with the largest context, so its
grid covers any step). The runner owns it, with the KV cache and the scratch block, and checks one replay
against the eager step before serving (``verify``).
"""
from __future__ import annotations

import torch

from pagebatch.kernels.metadata import AttentionMetadata


# Largest difference between replayed and eager logits, relative to their largest magnitude (or 1, if smaller).
VERIFY_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [s for s in sizes if s <= max_num_seqs] or [1]


class DecodeGraphs:
    def __init__(self, model, kv_caches, block_size: int, max_num_seqs: int, max_model_len: int, scratch_block: int,
                 capture: bool = True) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.scratch_block = scratch_block
        self.sizes = capture_sizes(max_num_seqs)
        n, dev = self.sizes[-1], model.device
        self.max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.slots = torch.full((n,), scratch_block * block_size, dtype=torch.int64, device=dev)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.full((n, self.max_blocks), scratch_block, dtype=torch.int32, device=dev)
        self.cu_seqlens = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.rows = torch.arange(n, dtype=torch.int64, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if capture:
            self._capture_all()

    def _meta(self, size: int, context_lens_cpu: list[int] | None = None) -> AttentionMetadata:
        return AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens[: size + 1],
            context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slots[:size],
            max_query_len=1,
            max_context_len=self.max_model_len,
            query_lens_cpu=[1] * size,
            context_lens_cpu=context_lens_cpu or [self.max_model_len] * size,
        )

    def _forward(self, size: int, context_lens_cpu: list[int] | None = None) -> torch.Tensor:
        return self.model.forward(
            self.input_ids[:size], self.positions[:size], self._meta(size, context_lens_cpu), self.kv_caches, self.rows[:size]
        )

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
            self._forward(size)  # warm-up: compiles kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def verify(self) -> str | None:
        """Replay one decode step and run the same step eagerly; why their logits differ, or None.

        The step's rows live in the scratch block, which no request owns: row i decodes position i over a
        context of i + 1 keys. The batch is exactly a captured size, so no padding row shares their slots.
        """
        rows = max(s for s in self.sizes if s <= min(8, self.block_size))
        vocab = self.model.embed.shape[0]
        ids = [(7 * i + 3) % vocab for i in range(rows)]
        positions = list(range(rows))
        slots = [self.scratch_block * self.block_size + i for i in range(rows)]
        context_lens = [i + 1 for i in range(rows)]
        replayed = self.run(ids, positions, slots, [[self.scratch_block]] * rows, context_lens).float().clone()
        dev = self.input_ids.device
        meta = AttentionMetadata(
            cu_seqlens_q=torch.arange(rows + 1, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev),
            block_tables=torch.full((rows, 1), self.scratch_block, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_query_len=1, max_context_len=rows, query_lens_cpu=[1] * rows, context_lens_cpu=context_lens,
        )
        eager = self.model.forward(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), meta,
                                   self.kv_caches, torch.arange(rows, device=dev)).float()
        scale = max(1.0, eager.abs().max().item())
        error = (replayed - eager).abs().max().item() / scale
        tolerance = VERIFY_TOLERANCE.get(self.model.dtype, 5e-2)
        if not error <= tolerance:  # NaN fails too
            return f"replayed logits differ from the eager step's by {error:.3g} (tolerance {tolerance:g})"
        return None

    def padded_size(self, batch_size: int) -> int | None:
        return next((s for s in self.sizes if s >= batch_size), None)

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            context_lens: list[int]) -> torch.Tensor:
        """Logits [B, V] of a decode-only batch of B sequences."""
        b = len(input_ids)
        size = self.padded_size(b)
        assert size is not None, "batch larger than the largest captured graph"
        dev = self.input_ids.device
        self.input_ids[:b].copy_(torch.tensor(input_ids, device=dev))
        self.positions[:b].copy_(torch.tensor(positions, device=dev))
        self.slots[:b].copy_(torch.tensor(slots, device=dev))
        self.context_lens[:b].copy_(torch.tensor(context_lens, device=dev))
        width = max(len(t) for t in tables)
        self.block_tables[:b, :width].copy_(torch.tensor([t + [self.scratch_block] * (width - len(t)) for t in tables], device=dev))
        # Rows b..size may hold a previous step's sequences: point them back at the scratch block.
        self.slots[b:size].fill_(self.scratch_block * self.block_size)
        self.context_lens[b:size].fill_(1)
        self.block_tables[b:size, 0].fill_(self.scratch_block)
        self.input_ids[b:size].zero_()
        self.positions[b:size].zero_()
        if size in self.graphs:
            self.graphs[size].replay()
            return self.outputs[size][:b]
        return self._forward(size, context_lens + [1] * (size - b))[:b]  # eager (CPU tests of the padding)
