"""Writes small random-weight checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is tested on, so tests, demos and
benchmarks make their own: config.json + model.safetensors + a byte-level BPE tokenizer with a
chat template, loadable by transformers and by this engine alike. ``embedding=True`` saves the base
model instead (``<Family>Model``: no language-model head, as embedding checkpoints are), optionally
with a sentence-transformers pooling description and Matryoshka dimensions. Every architecture is built
from its transformers config class and saved by transformers itself, so the files have the layout its
released checkpoints have (mixture-of-experts: one tensor per expert).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
}
BASE_MODELS = {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model",
               "qwen3_moe": "Qwen3MoeModel", "mixtral": "MixtralModel", "olmoe": "OlmoeModel",
               "gemma3": "Gemma3TextModel", "phi3": "Phi3Model"}
MOE_ARCHITECTURES = ("qwen3_moe", "mixtral", "olmoe")
ROPE_SCALINGS = ("llama3", "longrope")
ST_POOLING_MODES = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORDS = (
    "the a of to and in is it that for on with as was by at be this from or an are not have but "
    "batch model token prompt cache block queue worker result label summary document review "
    "positive negative neutral good bad great terrible price quality delivery fast slow ok yes no "
    "request response engine paged attention kernel throughput latency night data set storage "
    "café naïve über résumé 東京 北京 数据 模型 😀 🚀 ✓ € £ ¥ ±"
).split()


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 20))]
        out.append(" ".join(words) + rng.choice([".", "!", "?", ",", ":", ""]))
    out.extend(str(n) for n in range(200))
    return out


def make_tokenizer(path: Path, vocab_size: int = 512, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(path))
    return hf


def make_checkpoint(
    path: str | Path,
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    tokenizer_vocab_size: int = 512,
    max_position_embeddings: int = 4096,
    rope_theta: float = 10000.0,
    rope_scaling: str | None = None,
    partial_rotary_factor: float | None = None,
    tie_word_embeddings: bool | None = None,
    init_std: float = 0.08,
    dtype: str = "float32",
    seed: int = 0,
    embedding: bool = False,
    pooling: str | None = None,
    normalize: bool = True,
    matryoshka_dimensions: list[int] | None = None,
    num_experts: int = 8,
    experts_per_token: int = 2,
    sliding_window: int | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Create a random-weight checkpoint of ``arch`` at ``path`` and return the path.

    ``embedding``: the base model, embeddings only. ``pooling`` (last, mean or cls) writes a sentence-transformers
    description (``modules.json``, ``1_Pooling/config.json``, a Normalize module when ``normalize``);
    ``matryoshka_dimensions`` goes into config.json. Mixtures of experts (MOE_ARCHITECTURES) have ``num_experts``
    experts of ``intermediate_size`` each, ``experts_per_token`` of them per token. ``sliding_window``: Gemma 3's
    sliding layers' window (alternate layers slide, the last is global), else every layer's (Mistral, Qwen2, Phi-3,
    Mixtral, Qwen3-MoE). ``rope_scaling``: llama3, or longrope (the Phi-3 128k recipe, with
    original_max_position_embeddings a 32nd of the maximum; ``partial_rotary_factor`` for Phi-4-mini's partial
    rotary). ``config_overrides``: any other config field (clip_qkv, mlp_only_layers, final_logit_softcapping, ...).
    """
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(path, tokenizer_vocab_size, seed)
    config_cls = getattr(transformers, ARCHITECTURES[arch][0])
    head_dim = head_dim or (hidden_size // num_heads if arch in ("qwen3", "qwen3_moe", "gemma3") else None)
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": rope_theta,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": max(64, max_position_embeddings // 8),
        }
    elif rope_scaling == "longrope":
        rope = _longrope(rope_theta, max_position_embeddings, head_dim or hidden_size // num_heads, partial_rotary_factor)
    elif rope_scaling is not None:
        raise ValueError(f"unsupported rope_scaling {rope_scaling!r}; use one of {', '.join(ROPE_SCALINGS)} or leave it out")
    if partial_rotary_factor is not None and rope_scaling != "longrope":
        rope["partial_rotary_factor"] = partial_rotary_factor
    kwargs = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        vocab_size=vocab_size or max(len(tokenizer), tokenizer_vocab_size),
        max_position_embeddings=max_position_embeddings,
        rope_parameters=rope,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )
    if tie_word_embeddings is not None or arch != "gemma3":  # Gemma 3 ties them by default
        kwargs["tie_word_embeddings"] = bool(tie_word_embeddings)
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    kwargs.update(_family_config(arch, kwargs, rope, num_layers, num_experts, experts_per_token, sliding_window))
    if "original_max_position_embeddings" in rope and arch == "phi3":  # where Phi-3 configs keep it
        kwargs["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    if matryoshka_dimensions:
        kwargs["matryoshka_dimensions"] = list(matryoshka_dimensions)
    kwargs.update(config_overrides or {})
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, BASE_MODELS[arch] if embedding else ARCHITECTURES[arch][1])(config)
    _perturb_default_params(model, init_std, seed)
    model.to(getattr(torch, dtype)).save_pretrained(str(path))
    if pooling is not None:
        write_sentence_transformers_pooling(path, pooling, hidden_size, normalize)
    return path


def _family_config(arch: str, kwargs: dict, rope: dict, num_layers: int, num_experts: int, experts_per_token: int,
                   sliding_window: int | None) -> dict:
    """The config fields of one family beyond the shared ones."""
    inter = kwargs["intermediate_size"]
    if arch == "qwen3_moe":
        return dict(num_experts=num_experts, num_experts_per_tok=experts_per_token, moe_intermediate_size=inter,
                    norm_topk_prob=True, use_sliding_window=sliding_window is not None, sliding_window=sliding_window)
    if arch == "mixtral":
        return dict(num_local_experts=num_experts, num_experts_per_tok=experts_per_token, sliding_window=sliding_window)
    if arch == "olmoe":
        return dict(num_experts=num_experts, num_experts_per_tok=experts_per_token)
    if arch == "gemma3":
        # alternate layers slide, the last one is global; global layers rotate as the released 4B+ models do
        types = ["sliding_attention" if i % 2 == 0 and i < num_layers - 1 else "full_attention" for i in range(num_layers)]
        full = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}
        return dict(layer_types=types, sliding_window=sliding_window or 4096,
                    rope_parameters={"sliding_attention": dict(rope), "full_attention": full})
    if arch == "mistral" or (arch == "phi3" and sliding_window is not None):
        return dict(sliding_window=sliding_window)
    if arch == "qwen2" and sliding_window is not None:
        return dict(sliding_window=sliding_window, use_sliding_window=True, max_window_layers=0)
    return {}


def _longrope(theta: float, max_positions: int, head_dim: int, partial_rotary_factor: float | None) -> dict:
    """LongRoPE as Phi-3 128k configs set it: short and long rescale factors per rotary frequency."""
    rotary = int(head_dim * (partial_rotary_factor or 1.0))
    half = rotary // 2
    rope = {
        "rope_type": "longrope",
        "rope_theta": theta,
        "short_factor": [1.0 + 0.05 * i for i in range(half)],
        "long_factor": [1.0 + 0.5 * i for i in range(half)],
        "original_max_position_embeddings": max(16, max_positions // 32),
    }
    if partial_rotary_factor is not None:
        rope["partial_rotary_factor"] = partial_rotary_factor
    return rope


def write_sentence_transformers_pooling(path: Path, pooling: str, hidden_size: int, normalize: bool = True) -> None:
    """The files sentence-transformers (and this engine) read a checkpoint's pooling from."""
    if pooling not in ST_POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(ST_POOLING_MODES)}")
    st = "sentence_transformers.models."
    modules = [{"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    config = {"word_embedding_dimension": hidden_size, "include_prompt": True,
              **{mode: name == pooling for name, mode in ST_POOLING_MODES.items()}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))


@torch.no_grad()
def _perturb_default_params(model: torch.nn.Module, std: float, seed: int) -> None:
    """Randomize norm weights and biases (initialized to 1 and 0) so the tests exercise them."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):  # about their initial value: 1, or 0 where the norm adds 1 (Gemma)
            param.copy_(param + 0.2 * torch.randn(param.shape, generator=gen))
        elif name.endswith(".bias"):
            param.copy_(std * torch.randn(param.shape, generator=gen))


def sizes_for(preset: str) -> dict[str, int]:
    """Named shapes used by tests and benchmarks."""
    presets = {
        "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2),
        "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, vocab_size=2048),
        # ~28M parameters, the engine benchmark's Llama shape
        "bench": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408, vocab_size=4096),
        # the benchmark's mixture of experts: 8 experts of half the dense MLP, 2 per token, so the same ~28M
        # parameters are active per token as in "bench" (~62M in all)
        "bench-moe": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=704,
                          vocab_size=4096, num_experts=8, experts_per_token=2),
    }
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    return dict(presets[preset])


__all__ = ["ARCHITECTURES", "BASE_MODELS", "MOE_ARCHITECTURES", "ROPE_SCALINGS", "make_checkpoint", "make_tokenizer",
           "sizes_for", "write_sentence_transformers_pooling"]
