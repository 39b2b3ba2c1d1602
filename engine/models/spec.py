"""What the engine needs to know about a checkpoint's architecture, read from its config.json."""
from __future__ import annotations

from dataclasses import dataclass

import torch

FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3")
# ``<Family>ForCausalLM`` generates and embeds; ``<Family>Model`` (the base model: no language-model head, as
# embedding checkpoints are often saved) serves embeddings only.
SUPPORTED_ARCHITECTURES = tuple(f"{f}ForCausalLM" for f in FAMILIES) + tuple(f"{f}Model" for f in FAMILIES)


class CheckpointError(ValueError):
    """The checkpoint cannot be served; the message says what is wrong with it."""


@dataclass
class ModelSpec:
    architecture: str
    family: str  # one of FAMILIES
    has_lm_head: bool  # False: an embedding-only base model (True: the weights may still lack one, see load_model)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    inv_freq: torch.Tensor
    rope_attention_scaling: float
    sliding_window: int | None
    torch_dtype: str | None

    @classmethod
    def from_hf_config(cls, config) -> "ModelSpec":
        archs = getattr(config, "architectures", None) or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise CheckpointError(
                f"unsupported architecture {archs or getattr(config, 'model_type', '?')}; "
                f"pagebatch serves {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise CheckpointError(f"unsupported hidden_act {config.hidden_act!r}; only silu is implemented")
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        if num_heads % num_kv_heads:
            raise CheckpointError(f"num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        inv_freq, scaling = _rope(config, arch)
        attention_bias = bool(getattr(config, "attention_bias", False))
        sliding = getattr(config, "sliding_window", None)
        family = arch.removesuffix("ForCausalLM").removesuffix("Model")
        if family == "Qwen2" and not getattr(config, "use_sliding_window", False):
            sliding = None
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return cls(
            architecture=arch,
            family=family,
            has_lm_head=arch.endswith("ForCausalLM"),
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            rms_norm_eps=config.rms_norm_eps,
            qkv_bias=True if family == "Qwen2" else attention_bias,
            o_bias=False if family == "Qwen2" else attention_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=family == "Qwen3",
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            max_position_embeddings=config.max_position_embeddings,
            inv_freq=inv_freq,
            rope_attention_scaling=scaling,
            sliding_window=sliding,
            torch_dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
        )


def _rope(config, arch: str) -> tuple[torch.Tensor, float]:
    """Inverse frequencies computed by transformers' own rope functions, so scaling variants match exactly."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    if rope_type in ("dynamic", "longrope"):
        raise CheckpointError(f"rope_type {rope_type!r} changes with sequence length and is not supported")
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise CheckpointError(f"unknown rope_type {rope_type!r} in {arch}'s config")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    return inv_freq.float(), float(scaling)
