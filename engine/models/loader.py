"""Loads a Hugging Face checkpoint directory (config.json + *.safetensors), or a GGUF file converted into one, into a DecoderModel."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from pagebatch.engine.models.decoder import DecoderModel, LayerWeights
from pagebatch.engine.models.spec import CheckpointError, ModelSpec


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
    h, d, i = spec.hidden_size, spec.head_dim, spec.intermediate_size
    # A base model's weights are saved without the "model." of a causal LM's, and some embedding checkpoints keep
    # that layout whatever their config's architectures say.
    m = "model." if t.has("model.embed_tokens.weight") or not t.has("embed_tokens.weight") else ""
    q_out, kv_out = spec.num_heads * d, spec.num_kv_heads * d

    def w(name: str, *shape: int) -> torch.Tensor:
        return t.get(name, shape, dtype, device)

    def b(name: str, size: int, present: bool) -> torch.Tensor | None:
        return t.optional(name, (size,), dtype, device, present)

    layers = []
    for n in range(spec.num_layers):
        p = f"{m}layers.{n}."
        a = p + "self_attn."
        qkv_bias = None
        if spec.qkv_bias:
            qkv_bias = torch.cat([b(a + "q_proj.bias", q_out, True), b(a + "k_proj.bias", kv_out, True), b(a + "v_proj.bias", kv_out, True)])
        gate_up_bias = None
        if spec.mlp_bias:
            gate_up_bias = torch.cat([b(p + "mlp.gate_proj.bias", i, True), b(p + "mlp.up_proj.bias", i, True)])
        layers.append(
            LayerWeights(
                input_norm=w(p + "input_layernorm.weight", h),
                qkv=torch.cat([w(a + "q_proj.weight", q_out, h), w(a + "k_proj.weight", kv_out, h), w(a + "v_proj.weight", kv_out, h)]),
                qkv_bias=qkv_bias,
                q_norm=w(a + "q_norm.weight", d) if spec.qk_norm else None,
                k_norm=w(a + "k_norm.weight", d) if spec.qk_norm else None,
                o=w(a + "o_proj.weight", h, q_out),
                o_bias=b(a + "o_proj.bias", h, spec.o_bias),
                post_norm=w(p + "post_attention_layernorm.weight", h),
                gate_up=torch.cat([w(p + "mlp.gate_proj.weight", i, h), w(p + "mlp.up_proj.weight", i, h)]),
                gate_up_bias=gate_up_bias,
                down=w(p + "mlp.down_proj.weight", h, i),
                down_bias=b(p + "mlp.down_proj.bias", h, spec.mlp_bias),
            )
        )
    embed = w(f"{m}embed_tokens.weight", spec.vocab_size, h)
    # None: a base model, or base-model weights under a causal config (as some embedding checkpoints are published)
    lm_head = None
    if spec.has_lm_head and spec.tie_word_embeddings:
        lm_head = embed
    elif spec.has_lm_head and t.has("lm_head.weight"):
        lm_head = w("lm_head.weight", spec.vocab_size, h)
    elif spec.has_lm_head and m:
        raise CheckpointError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
    return DecoderModel(spec, embed, layers, w(f"{m}norm.weight", h), lm_head, max_positions)
