"""Writes small random-weight checkpoints in the standard Hugging Face layout.

No weights can be downloaded on the machines this project is tested on, so tests, demos and
benchmarks make their own: config.json + model.safetensors + a byte-level BPE tokenizer with a
chat template, loadable by transformers and by this engine alike. ``embedding=True`` saves the base
model instead (``<Family>Model``: no language-model head, as embedding checkpoints are), optionally
with a sentence-transformers pooling description and Matryoshka dimensions.
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
}
BASE_MODELS = {"llama": "LlamaModel", "mistral": "MistralModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model"}
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
    tie_word_embeddings: bool = False,
    init_std: float = 0.08,
    dtype: str = "float32",
    seed: int = 0,
    embedding: bool = False,
    pooling: str | None = None,
    normalize: bool = True,
    matryoshka_dimensions: list[int] | None = None,
) -> Path:
    """Create a random-weight checkpoint of ``arch`` at ``path`` and return the path.

    ``embedding``: the base model, embeddings only. ``pooling`` (last, mean or cls) writes a sentence-transformers
    description (``modules.json``, ``1_Pooling/config.json``, a Normalize module when ``normalize``);
    ``matryoshka_dimensions`` goes into config.json.
    """
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(path, tokenizer_vocab_size, seed)
    config_cls = getattr(transformers, ARCHITECTURES[arch][0])
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
    elif rope_scaling is not None:
        raise ValueError(f"unsupported rope_scaling {rope_scaling!r}; use 'llama3' or leave it out")
    kwargs = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        vocab_size=vocab_size or max(len(tokenizer), tokenizer_vocab_size),
        max_position_embeddings=max_position_embeddings,
        rope_parameters=rope,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )
    if head_dim is not None or arch == "qwen3":
        kwargs["head_dim"] = head_dim or hidden_size // num_heads
    if arch == "mistral":
        kwargs["sliding_window"] = None
    if matryoshka_dimensions:
        kwargs["matryoshka_dimensions"] = list(matryoshka_dimensions)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, BASE_MODELS[arch] if embedding else ARCHITECTURES[arch][1])(config)
    _perturb_default_params(model, init_std, seed)
    model.to(getattr(torch, dtype)).save_pretrained(str(path))
    if pooling is not None:
        write_sentence_transformers_pooling(path, pooling, hidden_size, normalize)
    return path


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
        if name.endswith("norm.weight"):
            param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
        elif name.endswith(".bias"):
            param.copy_(std * torch.randn(param.shape, generator=gen))


def sizes_for(preset: str) -> dict[str, int]:
    """Named shapes used by tests and benchmarks."""
    presets = {
        "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2),
        "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, vocab_size=2048),
        # ~28M parameters, the engine benchmark's Llama shape
        "bench": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408, vocab_size=4096),
    }
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    return dict(presets[preset])


__all__ = ["ARCHITECTURES", "BASE_MODELS", "make_checkpoint", "make_tokenizer", "sizes_for",
           "write_sentence_transformers_pooling"]
