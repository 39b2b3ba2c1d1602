"""The one owner of the KV cache tensors, the scratch block and the CUDA graphs: packs a scheduled
batch into tensors, runs the model over the paged KV cache, returns the logits of the sampled rows
and the final hidden states the pooling (embedding) requests need."""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field

import structlog
import torch

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.cuda_graphs import DecodeGraphs
from pagebatch.engine.models import DecoderModel, ModelSpec
from pagebatch.engine.scheduler import ScheduledBatch
from pagebatch.kernels.metadata import AttentionMetadata

log = structlog.get_logger("pagebatch.engine")

CPU_KV_CACHE_BYTES = 2 * 2**30  # and at most an eighth of the machine's memory


def _cpu_kv_budget() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return CPU_KV_CACHE_BYTES
    return min(CPU_KV_CACHE_BYTES, total // 8)


def kv_block_bytes(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * torch.empty((), dtype=dtype).element_size()


def plan_num_kv_blocks(
    config: EngineConfig, spec: ModelSpec, dtype: torch.dtype, device: torch.device, max_model_len: int
) -> int:
    """The KV pool's size in blocks: the configured count, or what the memory budget holds."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = kv_block_bytes(spec, config.block_size, dtype)
    budget = config.kv_cache_memory
    if budget is None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = int(free - total * (1 - config.gpu_memory_utilization))
    elif budget is None:
        needed = config.max_num_seqs * max_model_len * per_block // config.block_size
        budget = min(_cpu_kv_budget(), needed)
    blocks = budget // per_block
    if blocks < 1:
        raise ValueError(f"the KV cache budget of {budget} bytes holds no block of {per_block} bytes; raise kv_cache_memory")
    return int(blocks)


def zeroed_pool(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                commit: bool = False) -> torch.Tensor:
    """A zero tensor; on CPU an anonymous memory map, which the OS fills with zero pages on first touch, so a
    pool sized for the worst case costs neither start-up time nor memory until it is used. Where the kernel
    allows it the map asks for transparent huge pages: decode attention reads blocks scattered over the whole
    pool, and with 4 KiB pages nearly every block costs TLB misses.

    ``commit``: touch every page now. The prefix cache keeps freed blocks and hands out the least recently used
    one next, so over a long file every block of the pool is written once and the process's memory creeps up to
    the whole pool (256 MiB for the tiny test model in bfloat16, up to 2 GiB by default). A service process
    commits it at start instead: its memory is then what it was configured to hold from its first request, and a
    machine that cannot hold it says so at start, not half way through a batch."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_ANONYMOUS") else {}
    memory = mmap.mmap(-1, nbytes, **private)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: 4 KiB pages, still correct
            pass
    flat = torch.frombuffer(memory, dtype=torch.uint8)
    if commit:
        flat[::mmap.PAGESIZE].zero_()  # a write per page faults it in; the kernel has zeroed it already
    return flat.view(dtype).view(shape)


@dataclass
class StepOutput:
    logits: torch.Tensor | None = None  # [sampled requests, vocab] float32, in the batch's order
    # request id -> final-norm hidden states of the positions its pooling asked for (PoolingState.positions)
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, model: DecoderModel, num_blocks: int, block_size: int, commit_pool: bool = False) -> None:
        self.model = model
        self.block_size = block_size
        self.device = model.device
        spec = model.spec
        # Blocks 0..num_blocks-1 are the block manager's; one more, that no request owns, is the
        # scratch block padded CUDA-graph rows write to. Zeroed, not empty: masked-out slots are
        # multiplied by zero attention weights, and 0 * NaN is NaN.
        pool = zeroed_pool((spec.num_layers, 2, num_blocks + 1, block_size, spec.num_kv_heads, spec.head_dim),
                           model.dtype, self.device, commit=commit_pool)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = [(pool[i, 0], pool[i, 1]) for i in range(spec.num_layers)]
        self.scratch_block = num_blocks
        self.decode_graphs: DecodeGraphs | None = None
        # captured | padded-eager (graph-shaped inputs run eagerly) | eager-fallback | off; and why
        self.graphs_state, self.graphs_detail = "off", "not enabled"

    def enable_decode_graphs(self, max_num_seqs: int, max_model_len: int, check: bool = True) -> None:
        """Capture decode steps where the device and the kernel backend allow it and (``check``) verify one replay
        against the eager step; a failure of either costs speed, not service."""
        if self.device.type != "cuda" or not self.model.kernels.supports_cuda_graphs:
            why = "not a CUDA device" if self.device.type != "cuda" else f"the {self.model.kernels.name} kernels cannot be captured"
            self.graphs_state, self.graphs_detail = "off", why
            return
        try:
            self.use_decode_graphs(max_num_seqs, max_model_len)
        except RuntimeError as exc:  # a driver or capture problem
            self.decode_graphs = None
            self.graphs_state, self.graphs_detail = "eager-fallback", f"capture failed: {str(exc)[:300]}"
            log.warning("CUDA graph capture failed; decode steps run eagerly", error=str(exc))
            return
        if check:
            self.check_decode_graphs()

    def use_decode_graphs(self, max_num_seqs: int, max_model_len: int, capture: bool = True) -> None:
        """Run decode-only steps through padded, graph-shaped inputs (``capture=False``: eagerly, to test the padding)."""
        self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, self.block_size, max_num_seqs, max_model_len,
                                          self.scratch_block, capture)
        self.graphs_state = "captured" if capture else "padded-eager"
        self.graphs_detail = "not checked"

    def check_decode_graphs(self) -> bool:
        """Replay one decode step against the eager forward; on a difference (or an error) decode steps run eagerly
        from now on, with one warning. True when the graphs stay."""
        try:
            problem = self.decode_graphs.verify()
        except RuntimeError as exc:
            problem = f"replay failed: {str(exc)[:300]}"
        if problem is None:
            self.graphs_detail = "replay matches the eager step"
            return True
        log.warning("CUDA graph replay disagrees with the eager decode step; decode steps run eagerly", reason=problem)
        self.decode_graphs = None
        self.graphs_state, self.graphs_detail = "eager-fallback", problem
        return False

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        """Run one step; returns the logits of the batch's sampled requests (``batch.sample``), in order, and the
        hidden states of its pooling requests."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        logits_rows: list[int] = []
        pooled_rows: list[int] = []
        pooled_counts: dict[str, int] = {}
        for req, num_new, samples in zip(batch.requests, batch.num_new_tokens, batch.sample):
            start = req.num_computed_tokens
            end = start + num_new
            input_ids.extend(req.token_ids[start:end])
            positions.extend(self.model.rope_rows(req.num_prompt_tokens, start, end))  # positions, unless LongRoPE
            table = req.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(num_new)
            context_lens.append(end)
            if samples:
                logits_rows.append(len(input_ids) - 1)
            elif req.pooling is not None:
                wanted = req.pooling.positions(start, end)
                pooled_rows.extend(len(input_ids) - end + p for p in wanted)  # position p's row in the packed batch
                pooled_counts[req.request_id] = len(wanted)
        graphs = self.decode_graphs
        if graphs is not None and len(logits_rows) == len(query_lens) == len(input_ids) and graphs.padded_size(len(input_ids)):
            tables = [r.block_table for r in batch.requests]
            return StepOutput(graphs.run(input_ids, positions, slots, tables, context_lens))
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
        hidden = self.model.final_hidden(
            torch.tensor(input_ids, dtype=torch.int64, device=dev),
            torch.tensor(positions, dtype=torch.int64, device=dev),
            meta,
            self.kv_caches,
            torch.tensor(logits_rows + pooled_rows, dtype=torch.int64, device=dev),
        )
        n = len(logits_rows)
        logits = self.model.logits(hidden[:n]) if n else None
        pooled = dict(zip(pooled_counts, hidden[n:].split(list(pooled_counts.values())))) if pooled_counts else {}
        return StepOutput(logits, pooled)
