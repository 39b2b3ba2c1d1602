"""One Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) over a packed varlen batch.

Tokens of all scheduled requests are packed along one dimension; attention reads each request's
context from the paged KV cache through the ops of a ``kernels.KernelBackend`` (``use_kernels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagebatch.engine.models.spec import ModelSpec
from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.dispatch import KernelBackend, select_backend


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(H + 2 * Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * I, hidden], gate rows first
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class DecoderModel:
    def __init__(
        self, spec: ModelSpec, embed: torch.Tensor, layers: list[LayerWeights], norm: torch.Tensor,
        lm_head: torch.Tensor | None, max_positions: int, kernels: KernelBackend | None = None,
    ) -> None:
        self.spec = spec
        self.embed = embed
        self.layers = layers
        self.norm = norm
        self.lm_head = lm_head  # None: a base model, which serves embeddings only
        self.device = embed.device
        self.dtype = embed.dtype
        self.use_kernels(kernels or select_backend("auto", self.device.type))
        self.scale = spec.head_dim**-0.5
        freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * spec.inv_freq[None, :]
        self.cos_sin_cache = torch.cat(
            (freqs.cos() * spec.rope_attention_scaling, freqs.sin() * spec.rope_attention_scaling), dim=-1
        ).to(self.device)

    def use_kernels(self, kernels: KernelBackend) -> None:
        self.kernels = kernels
        self.ops = kernels.ops

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (float32) at the rows ``logits_indices`` of the packed batch."""
        return self.logits(self.final_hidden(input_ids, positions, meta, kv_caches, logits_indices))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of final-norm hidden states."""
        if self.lm_head is None:
            raise RuntimeError("this model has no language-model head; it serves embeddings only")
        return F.linear(hidden, self.lm_head).float()

    @torch.inference_mode()
    def final_hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """The final-norm hidden states (model dtype) at the rows ``rows`` of the packed batch."""
        ops, spec = self.ops, self.spec
        num_tokens = input_ids.shape[0]
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        hidden = F.embedding(input_ids, self.embed)
        residual = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            if residual is None:
                residual = hidden
                x = ops.rms_norm(hidden, layer.input_norm, spec.rms_norm_eps)
            else:
                x, residual = ops.rms_norm(hidden, layer.input_norm, spec.rms_norm_eps, residual)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = q.reshape(num_tokens, spec.num_heads, spec.head_dim)
            k = k.reshape(num_tokens, spec.num_kv_heads, spec.head_dim)
            v = v.reshape(num_tokens, spec.num_kv_heads, spec.head_dim)
            if spec.qk_norm:
                q = ops.rms_norm(q, layer.q_norm, spec.rms_norm_eps)
                k = ops.rms_norm(k, layer.k_norm, spec.rms_norm_eps)
            q, k = ops.rotary_embedding(positions, q, k, self.cos_sin_cache)
            ops.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
            attn = ops.paged_attention(q, k_cache, v_cache, meta, self.scale)
            hidden = F.linear(attn.reshape(num_tokens, q_size), layer.o, layer.o_bias)
            x, residual = ops.rms_norm(hidden, layer.post_norm, spec.rms_norm_eps, residual)
            hidden = F.linear(ops.silu_and_mul(F.linear(x, layer.gate_up, layer.gate_up_bias)), layer.down, layer.down_bias)
        hidden = hidden.index_select(0, rows)
        residual = residual.index_select(0, rows)
        x, _ = ops.rms_norm(hidden, self.norm, spec.rms_norm_eps, residual)
        return x
