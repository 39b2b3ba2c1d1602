"""Loads a Hugging Face checkpoint directory (config.json + *.safetensors), or a GGUF file converted into one, into a DecoderModel."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from pagebatch.engine.models.decoder import DecoderModel, DenseMlpWeights, LayerWeights
from pagebatch.engine.models.errors import CheckpointError
from pagebatch.engine.models.moe import MoeWeights
from pagebatch.engine.models.spec import ModelSpec


def resolve_checkpoint(model: str, cache_dir: str | Path | None = None) -> Path:
    """A local directory as is; a .gguf file converted (once, cached) into a checkpoint directory under
    cache_dir (default $PAGEBATCH_CACHE_DIR/gguf, see engine.models.gguf); anything else is tried as a
    Hugging Face hub id (needs the network)."""
    from pagebatch.engine.models.gguf import convert_gguf, is_gguf

    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if is_gguf(path):
        return convert_gguf(path, cache_dir)
    if path.exists():
        raise CheckpointError(f"{model} is a file; pass the checkpoint directory that holds config.json, or a .gguf file")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise CheckpointError(
            f"{model} is not a local checkpoint directory and could not be fetched from the Hugging Face hub ({exc})"
        ) from exc


def load_hf_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{path}/config.json cannot be read: {exc}") from exc


class _Tensors:
    """All tensors of a checkpoint's safetensors files, opened lazily, taken one by one."""

    def __init__(self, path: Path) -> None:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path} has no *.safetensors weight files")
        self.where: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        self.where[name] = file
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt file
                raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
        self._open: dict[Path, object] = {}

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        file = self.where.get(name)
        if file is None:
            raise CheckpointError(f"checkpoint is missing tensor {name!r}")
        handle = self._open.get(file)
        if handle is None:
            handle = self._open[file] = safe_open(str(file), framework="pt")
        tensor = handle.get_tensor(name)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, the config implies {shape}")
        return tensor.to(device=device, dtype=dtype)

    def optional(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, present: bool):
        return self.get(name, shape, dtype, device) if present else None


def load_model(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device, max_positions: int) -> DecoderModel:
    t = _Tensors(path)
    h = spec.hidden_size
    # A base model's weights are saved without the "model." of a causal LM's, and some embedding checkpoints keep
    # that layout whatever their config's architectures say.
    m = "model." if t.has("model.embed_tokens.weight") or not t.has("embed_tokens.weight") else ""
    get = _Getter(t, spec, dtype, device)
    layers = [_layer(get, spec, f"{m}layers.{n}.", n) for n in range(spec.num_layers)]
    embed = get.w(f"{m}embed_tokens.weight", spec.vocab_size, h)
    # None: a base model, or base-model weights under a causal config (as some embedding checkpoints are published)
    lm_head = None
    if spec.has_lm_head and spec.tie_word_embeddings:
        lm_head = embed
    elif spec.has_lm_head and t.has("lm_head.weight"):
        lm_head = get.w("lm_head.weight", spec.vocab_size, h)
    elif spec.has_lm_head and m:
        raise CheckpointError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
    return DecoderModel(spec, embed, layers, get.norm(f"{m}norm.weight", h), lm_head, max_positions)


class _Getter:
    """Tensors by name and expected shape, in the model's dtype and device; norms with the family's offset folded in."""

    def __init__(self, tensors: _Tensors, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
        self.t, self.spec, self.dtype, self.device = tensors, spec, dtype, device

    def has(self, name: str) -> bool:
        return self.t.has(name)

    def w(self, name: str, *shape: int) -> torch.Tensor:
        return self.t.get(name, shape, self.dtype, self.device)

    def b(self, name: str, size: int, present: bool) -> torch.Tensor | None:
        return self.t.optional(name, (size,), self.dtype, self.device, present)

    def norm(self, name: str, size: int) -> torch.Tensor:
        if not self.spec.norm_offset:
            return self.w(name, size)
        # Gemma scales by (1 + weight), computed in float32 as transformers does
        raw = self.t.get(name, (size,), torch.float32, self.device)
        return (self.spec.norm_offset + raw).to(self.dtype)


def _layer(get: _Getter, spec: ModelSpec, p: str, n: int) -> LayerWeights:
    h, d = spec.hidden_size, spec.head_dim
    a = p + "self_attn."
    q_out, kv_out = spec.num_heads * d, spec.num_kv_heads * d
    if spec.fused_projections:
        qkv = get.w(a + "qkv_proj.weight", q_out + 2 * kv_out, h)
    else:
        qkv = torch.cat([get.w(a + "q_proj.weight", q_out, h), get.w(a + "k_proj.weight", kv_out, h),
                         get.w(a + "v_proj.weight", kv_out, h)])
    qkv_bias = None
    if spec.qkv_bias:
        qkv_bias = torch.cat([get.b(a + "q_proj.bias", q_out, True), get.b(a + "k_proj.bias", kv_out, True),
                              get.b(a + "v_proj.bias", kv_out, True)])
    q_norm = k_norm = None
    if spec.qk_norm is not None:
        q_size, k_size = (d, d) if spec.qk_norm == "head" else (q_out, kv_out)
        q_norm, k_norm = get.norm(a + "q_norm.weight", q_size), get.norm(a + "k_norm.weight", k_size)
    sandwich = spec.sandwich_norms
    return LayerWeights(
        input_norm=get.norm(p + "input_layernorm.weight", h),
        qkv=qkv,
        qkv_bias=qkv_bias,
        q_norm=q_norm,
        k_norm=k_norm,
        o=get.w(a + "o_proj.weight", h, q_out),
        o_bias=get.b(a + "o_proj.bias", h, spec.o_bias),
        post_norm=get.norm(p + "post_attention_layernorm.weight", h),
        mlp=_moe(get, spec, p) if spec.moe is not None and spec.moe.sparse_layers[n] else _dense_mlp(get, spec, p),
        pre_ff_norm=get.norm(p + "pre_feedforward_layernorm.weight", h) if sandwich else None,
        post_ff_norm=get.norm(p + "post_feedforward_layernorm.weight", h) if sandwich else None,
    )


def _dense_mlp(get: _Getter, spec: ModelSpec, p: str) -> DenseMlpWeights:
    h, i = spec.hidden_size, spec.intermediate_size
    if spec.fused_projections:
        gate_up = get.w(p + "mlp.gate_up_proj.weight", 2 * i, h)
    else:
        gate_up = torch.cat([get.w(p + "mlp.gate_proj.weight", i, h), get.w(p + "mlp.up_proj.weight", i, h)])
    gate_up_bias = None
    if spec.mlp_bias:
        gate_up_bias = torch.cat([get.b(p + "mlp.gate_proj.bias", i, True), get.b(p + "mlp.up_proj.bias", i, True)])
    return DenseMlpWeights(gate_up, gate_up_bias, get.w(p + "mlp.down_proj.weight", h, i),
                           get.b(p + "mlp.down_proj.bias", h, spec.mlp_bias))


# Per-expert tensor names (gate, up, down) under ``experts.<e>.``: Mixtral's original checkpoints, and the rest.
_EXPERT_NAMES = {"block_sparse_moe.": ("w1", "w3", "w2"), "mlp.": ("gate_proj", "up_proj", "down_proj")}


def _moe(get: _Getter, spec: ModelSpec, p: str) -> MoeWeights:
    """The router and the experts, from per-expert tensors (as checkpoints are published) or fused ones
    (``experts.gate_up_proj`` [E, 2I, hidden] and ``experts.down_proj`` [E, hidden, I], as transformers 5 holds
    them and GGUF conversions write them)."""
    h, moe = spec.hidden_size, spec.moe
    e, i = moe.num_experts, moe.intermediate_size
    block = "block_sparse_moe." if get.has(p + "block_sparse_moe.gate.weight") else "mlp."
    router = get.w(p + block + "gate.weight", e, h)
    fused = p + block + "experts."
    if get.has(fused + "gate_up_proj"):
        return MoeWeights(router, get.w(fused + "gate_up_proj", e, 2 * i, h), get.w(fused + "down_proj", e, h, i))
    gate, up, down = _EXPERT_NAMES[block]
    w13 = torch.stack([torch.cat([get.w(f"{fused}{x}.{gate}.weight", i, h), get.w(f"{fused}{x}.{up}.weight", i, h)])
                       for x in range(e)])
    w2 = torch.stack([get.w(f"{fused}{x}.{down}.weight", h, i) for x in range(e)])
    return MoeWeights(router, w13, w2)
