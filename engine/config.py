"""The engine's knobs, in one place."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagebatch.kernels.dispatch import check_choice as check_kernels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    model: str
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (see engine.dtypes.resolve_dtype: on CPU bfloat16 where
    # the CPU computes it natively (AVX512-BF16/AMX), float32 elsewhere; on GPU the checkpoint's dtype)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    block_size: int = 16
    num_kv_blocks: int | None = None  # the KV pool's size in blocks; None: derived from the memory budget
    kv_cache_memory: int | None = None  # bytes for the KV pool; None: what max_num_seqs x max_model_len needs, up to 2 GiB (and an eighth of RAM) on CPU, 90% of free memory on GPU
    commit_kv_pool: bool = False  # CPU: fault the whole KV pool in at start (engine/runner.py zeroed_pool)
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    enable_prefix_caching: bool = True
    served_model_name: str | None = None
    seed: int = 0  # for unseeded sampled requests
    enable_cuda_graphs: bool = True  # decode steps on GPU only
    kernels: str = "auto"  # torch | triton | cpu | auto (Triton on CUDA when it imports, cpu on CPU); see kernels.dispatch
    # Before serving, run each compiled (Triton) kernel once against its torch reference and replace any that fails
    # (engine.serving_path); and check a captured CUDA graph's replay against the eager decode step.
    kernel_self_check: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, "auto"):
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or auto, got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        check_kernels(self.kernels)

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but torch sees no CUDA device; use device='cpu'")
        return device
