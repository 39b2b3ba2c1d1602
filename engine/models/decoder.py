"""One decoder for every served family, over a packed varlen batch.

Tokens of all scheduled requests are packed along one dimension; attention reads each request's
context from the paged KV cache through the ops of a ``kernels.KernelBackend`` (``use_kernels``).
What differs between families is read from the ``ModelSpec``: q/k norms (per head or over all
heads), clamped q/k/v, partial rotary and per-layer rope tables, each layer's attention window,
Gemma's scaled embeddings and extra norms around attention and MLP, dense or mixture-of-experts
MLPs, and soft-capped logits.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from pagebatch.engine.models.moe import MoeWeights, moe_mlp
from pagebatch.engine.models.spec import ModelSpec
from pagebatch.kernels.dispatch import KernelBackend, select_backend
from pagebatch.kernels.metadata import AttentionMetadata
from pagebatch.kernels.reference import ACTIVATIONS


@dataclass
class DenseMlpWeights:
    gate_up: torch.Tensor  # [2 * I, hidden], gate rows first
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(H + 2 * Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # [D] per head, or [H * D] over all heads (spec.qk_norm)
    k_norm: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor  # post_attention_layernorm: before the MLP, or (sandwich norms) on the attention output
    mlp: DenseMlpWeights | MoeWeights
    pre_ff_norm: torch.Tensor | None = None  # sandwich norms only: before the MLP
    post_ff_norm: torch.Tensor | None = None  # sandwich norms only: on the MLP output

    def tensors(self) -> list[torch.Tensor]:
        out = [getattr(self, f.name) for f in fields(self) if f.name != "mlp"]
        return [t for t in out + [getattr(self.mlp, f.name) for f in fields(self.mlp)] if t is not None]


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
        self.max_positions = max_positions
        self.use_kernels(kernels or select_backend("auto", self.device.type))
        self.scale = spec.scale
        self.rope_caches = spec.rope.caches(max_positions, self.device)
        # transformers multiplies by the scale rounded to the weights' dtype
        self.embed_scale = (torch.tensor(spec.embed_scale, dtype=self.dtype, device=self.device)
                            if spec.embed_scale is not None else None)

    def use_kernels(self, kernels: KernelBackend) -> None:
        self.kernels = kernels
        self.ops = kernels.ops

    def required_ops(self) -> list[str]:
        """The names of the kernel ops this model's forward calls."""
        ops = ["rms_norm", "rotary_embedding", "write_kv", "paged_attention", ACTIVATIONS[self.spec.hidden_act]]
        return ops + (["fused_moe"] if self.spec.moe is not None else [])

    def rope_rows(self, num_prompt_tokens: int, start: int, end: int) -> range | list[int]:
        """The rotary-cache rows of a request's positions start..end-1 (the positions themselves unless LongRoPE)."""
        return self.spec.rope.rows(self.max_positions, num_prompt_tokens, start, end)

    def prefix_salt(self, num_prompt_tokens: int) -> bytes:
        """What starts a request's block-hash chain in the prefix cache (see engine.models.rope)."""
        return self.spec.rope.prefix_salt(num_prompt_tokens)

    def num_parameters(self, active: bool = False) -> int:
        """Weights in the model; ``active``: those one token uses (a mixture's routed experts only)."""
        total = self.embed.numel() + self.norm.numel()
        if self.lm_head is not None and self.lm_head is not self.embed:
            total += self.lm_head.numel()
        for layer in self.layers:
            total += sum(t.numel() for t in layer.tensors())
            if active and isinstance(layer.mlp, MoeWeights):
                experts = layer.mlp.w13.shape[0]
                total -= (layer.mlp.w13.numel() + layer.mlp.w2.numel()) * (experts - self.spec.moe.top_k) // experts
        return total

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
        logits = F.linear(hidden, self.lm_head).float()
        cap = self.spec.final_logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @torch.inference_mode()
    def final_hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """The final-norm hidden states (model dtype) at the rows ``rows`` of the packed batch.

        ``positions`` are rotary-cache rows (``rope_rows``): the tokens' positions unless LongRoPE.
        """
        ops, spec = self.ops, self.spec
        eps = spec.rms_norm_eps
        hidden = F.embedding(input_ids, self.embed)
        if self.embed_scale is not None:
            hidden = hidden * self.embed_scale
        residual = None
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, kv_caches)):
            if residual is None:
                residual = hidden
                x = ops.rms_norm(hidden, layer.input_norm, eps)
            else:
                x, residual = ops.rms_norm(hidden, layer.input_norm, eps, residual)
            attn = self._attention(i, layer, x, positions, meta, k_cache, v_cache)
            if spec.sandwich_norms:
                x, residual = ops.rms_norm(ops.rms_norm(attn, layer.post_norm, eps), layer.pre_ff_norm, eps, residual)
            else:
                x, residual = ops.rms_norm(attn, layer.post_norm, eps, residual)
            hidden = self._mlp(layer, x)
            if spec.sandwich_norms:
                hidden = ops.rms_norm(hidden, layer.post_ff_norm, eps)
        hidden = hidden.index_select(0, rows)
        residual = residual.index_select(0, rows)
        x, _ = ops.rms_norm(hidden, self.norm, eps, residual)
        return x

    def _attention(self, i: int, layer: LayerWeights, x: torch.Tensor, positions: torch.Tensor,
                   meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        ops, spec = self.ops, self.spec
        num_tokens, eps = x.shape[0], spec.rms_norm_eps
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        q, k, v = F.linear(x, layer.qkv, layer.qkv_bias).split([q_size, kv_size, kv_size], dim=-1)
        if spec.qk_norm == "full":
            q, k = ops.rms_norm(q, layer.q_norm, eps), ops.rms_norm(k, layer.k_norm, eps)
        if spec.clip_qkv is not None:
            c = spec.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        q = q.reshape(num_tokens, spec.num_heads, spec.head_dim)
        k = k.reshape(num_tokens, spec.num_kv_heads, spec.head_dim)
        v = v.reshape(num_tokens, spec.num_kv_heads, spec.head_dim)
        if spec.qk_norm == "head":
            q, k = ops.rms_norm(q, layer.q_norm, eps), ops.rms_norm(k, layer.k_norm, eps)
        q, k = self._rotate(i, positions, q, k)
        ops.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        attn = ops.paged_attention(q, k_cache, v_cache, meta, self.scale, window=spec.layer_windows[i])
        return F.linear(attn.reshape(num_tokens, q_size), layer.o, layer.o_bias)

    def _rotate(self, i: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rope = self.spec.rope
        cache = self.rope_caches[rope.layer_tables[i]]
        rot = rope.rotary_dim
        if rot == q.shape[-1]:
            return self.ops.rotary_embedding(positions, q, k, cache)
        q_rot, k_rot = self.ops.rotary_embedding(positions, q[..., :rot], k[..., :rot], cache)
        return torch.cat((q_rot, q[..., rot:]), dim=-1), torch.cat((k_rot, k[..., rot:]), dim=-1)

    def _mlp(self, layer: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        mlp = layer.mlp
        if isinstance(mlp, MoeWeights):
            return moe_mlp(self.ops, mlp, self.spec.moe, x, self.spec.hidden_act)
        act = getattr(self.ops, ACTIVATIONS[self.spec.hidden_act])
        return F.linear(act(F.linear(x, mlp.gate_up, mlp.gate_up_bias)), mlp.down, mlp.down_bias)
