"""The Triton backend: the hot-path ops with the signatures of ``kernels.reference``.

Importing this module imports Triton (``kernels.dispatch`` treats an ImportError as "no Triton").
On CPU tensors the kernels only run under ``TRITON_INTERPRET=1``, which Triton reads when the
kernel modules are imported, so set it before the first import.
"""
from __future__ import annotations

import torch

from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.triton_activation import gelu_tanh_and_mul, silu_and_mul
from pagebatch.kernels.triton_attention import paged_attention_fwd
from pagebatch.kernels.triton_kv_write import write_kv
from pagebatch.kernels.triton_moe import fused_moe
from pagebatch.kernels.triton_norm import rms_norm
from pagebatch.kernels.triton_rotary import rotary_embedding

__all__ = ["fused_moe", "gelu_tanh_and_mul", "paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul",
           "write_kv"]


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries [T, H, D] over each sequence's paged context (with ``window``, a
    sliding-window layer's).

    One launch serves the whole mixed batch; decode-only batches with few sequences and long
    contexts use split-KV plus a merge launch. Reads ``meta.max_query_len`` and
    ``meta.max_context_len`` (host ints, no device sync).
    """
    return paged_attention_fwd(q, k_cache, v_cache, meta, scale, window=window)
