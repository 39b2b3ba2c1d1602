"""What the engine needs to know about a checkpoint's architecture, read from its config.json.

One decoder serves every family; a family is the set of choices its config implies (how q/k are normed,
which activation, where the norms sit, which layers slide, which are mixtures of experts, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

from pagebatch.engine.models.errors import CheckpointError
from pagebatch.engine.models.rope import RopeSpec, read_rope

# checkpoint class -> family. ``*ForCausalLM`` generates and embeds; the base model (no language-model head, as
# embedding checkpoints are often saved) serves embeddings only.
CAUSAL_LM = {
    "LlamaForCausalLM": "Llama", "MistralForCausalLM": "Mistral", "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3", "Qwen3MoeForCausalLM": "Qwen3Moe", "MixtralForCausalLM": "Mixtral",
    "OlmoeForCausalLM": "Olmoe", "Gemma3ForCausalLM": "Gemma3", "Phi3ForCausalLM": "Phi3",
}
BASE_MODEL = {
    "LlamaModel": "Llama", "MistralModel": "Mistral", "Qwen2Model": "Qwen2", "Qwen3Model": "Qwen3",
    "Qwen3MoeModel": "Qwen3Moe", "MixtralModel": "Mixtral", "OlmoeModel": "Olmoe", "Gemma3TextModel": "Gemma3",
    "Phi3Model": "Phi3",
}
FAMILIES = tuple(dict.fromkeys(CAUSAL_LM.values()))
SUPPORTED_ARCHITECTURES = tuple(CAUSAL_LM) + tuple(BASE_MODEL)
# Families that cap the context at their sliding window instead of attending through one (every request then
# fits inside the window, so the window never cuts anything).
_WINDOW_CAPS_CONTEXT = ("Mistral", "Qwen2")
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}  # config's name -> the engine's
_UNSERVED = {"Gemma3ForConditionalGeneration": "it is Gemma 3's image-text model; pagebatch serves the text-only "
                                               "Gemma3ForCausalLM"}


@dataclass(frozen=True)
class MoeSpec:
    num_experts: int
    top_k: int
    intermediate_size: int  # of one expert
    renormalize: bool  # the top-k routing weights are rescaled to sum to 1 (Mixtral always; Qwen3-MoE / OLMoE: norm_topk_prob)
    sparse_layers: tuple[bool, ...]  # which layers are mixtures (the others are dense MLPs of intermediate_size)


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
    qk_norm: str | None  # "head": per head (Qwen3, Gemma 3); "full": over all heads at once (OLMoE); None
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope: RopeSpec
    sliding_window: int | None  # a family that caps its context at the window (see _WINDOW_CAPS_CONTEXT)
    layer_windows: tuple[int | None, ...]  # each layer's attention window (None: full attention)
    torch_dtype: str | None
    hidden_act: str = "silu"  # silu | gelu_tanh
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight): folded into the weights at load
    sandwich_norms: bool = False  # Gemma: attention and MLP outputs are normed too (pre/post feed-forward norms)
    clip_qkv: float | None = None  # OLMoE: q, k and v clamped to [-clip, clip]
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size)
    attn_scale: float | None = None  # softmax scale; None: head_dim ** -0.5
    final_logit_softcap: float | None = None  # Gemma: logits = cap * tanh(logits / cap)
    fused_projections: bool = False  # Phi-3: qkv_proj and gate_up_proj are single tensors in the checkpoint
    moe: MoeSpec | None = None

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5

    @classmethod
    def from_hf_config(cls, config) -> "ModelSpec":
        archs = getattr(config, "architectures", None) or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            why = next((f"; {_UNSERVED[a]}" for a in archs if a in _UNSERVED), "")
            raise CheckpointError(
                f"unsupported architecture {archs or getattr(config, 'model_type', '?')}{why}; "
                f"pagebatch serves {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        family = CAUSAL_LM.get(arch) or BASE_MODEL[arch]
        act_name = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
        if act_name not in _ACTIVATIONS:
            raise CheckpointError(f"unsupported activation {act_name!r}; implemented: {', '.join(_ACTIVATIONS)}")
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        if num_heads % num_kv_heads:
            raise CheckpointError(f"num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        layer_types = getattr(config, "layer_types", None)
        spec = cls(
            architecture=arch,
            family=family,
            has_lm_head=arch in CAUSAL_LM,
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
            qk_norm={"Qwen3": "head", "Qwen3Moe": "head", "Gemma3": "head", "Olmoe": "full"}.get(family),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            max_position_embeddings=config.max_position_embeddings,
            rope=read_rope(config, head_dim, layer_types),
            sliding_window=None,
            layer_windows=(None,) * config.num_hidden_layers,
            torch_dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
            hidden_act=_ACTIVATIONS[act_name],
        )
        _read_windows(spec, config, family, layer_types)
        _FAMILY_READERS.get(family, lambda spec, config: None)(spec, config)
        return spec


def _read_windows(spec: ModelSpec, config, family: str, layer_types: list[str] | None) -> None:
    window = getattr(config, "sliding_window", None)
    if family == "Qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    if not window:
        return
    if family in _WINDOW_CAPS_CONTEXT:
        spec.sliding_window = window
    elif layer_types is not None:  # as transformers reads them: Gemma 3's interleaving, Qwen3's max_window_layers
        spec.layer_windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
    elif family != "Olmoe":  # OLMoE's attention never slides, whatever its config says
        spec.layer_windows = (window,) * spec.num_layers


def _read_qwen3_moe(spec: ModelSpec, config) -> None:
    mlp_only = set(getattr(config, "mlp_only_layers", None) or [])
    step = getattr(config, "decoder_sparse_step", 1) or 1
    experts = config.num_experts
    sparse = tuple(i not in mlp_only and experts > 0 and (i + 1) % step == 0 for i in range(spec.num_layers))
    spec.moe = MoeSpec(experts, config.num_experts_per_tok, config.moe_intermediate_size,
                       bool(config.norm_topk_prob), sparse)


def _read_mixtral(spec: ModelSpec, config) -> None:
    spec.moe = MoeSpec(config.num_local_experts, config.num_experts_per_tok, config.intermediate_size, True,
                       (True,) * spec.num_layers)


def _read_olmoe(spec: ModelSpec, config) -> None:
    spec.clip_qkv = getattr(config, "clip_qkv", None)
    if spec.head_dim * spec.num_heads != spec.hidden_size:
        raise CheckpointError("OLMoE's q/k norms span hidden_size: head_dim x num_attention_heads must equal it")
    spec.moe = MoeSpec(config.num_experts, config.num_experts_per_tok, config.intermediate_size,
                       bool(config.norm_topk_prob), (True,) * spec.num_layers)


def _read_gemma3(spec: ModelSpec, config) -> None:
    if getattr(config, "use_bidirectional_attention", False):
        raise CheckpointError("use_bidirectional_attention (EmbeddingGemma) is not supported: the engine's attention is causal")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise CheckpointError("attn_logit_softcapping is not supported (Gemma 3 checkpoints leave it unset)")
    spec.norm_offset = 1.0
    spec.sandwich_norms = True
    spec.embed_scale = spec.hidden_size**0.5
    spec.attn_scale = config.query_pre_attn_scalar**-0.5
    spec.final_logit_softcap = getattr(config, "final_logit_softcapping", None)


def _read_phi3(spec: ModelSpec, config) -> None:
    spec.fused_projections = True


_FAMILY_READERS = {"Qwen3Moe": _read_qwen3_moe, "Mixtral": _read_mixtral, "Olmoe": _read_olmoe,
                   "Gemma3": _read_gemma3, "Phi3": _read_phi3}

__all__ = ["BASE_MODEL", "CAUSAL_LM", "FAMILIES", "SUPPORTED_ARCHITECTURES", "CheckpointError", "ModelSpec", "MoeSpec"]
