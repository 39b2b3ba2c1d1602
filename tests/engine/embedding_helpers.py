"""Reference embeddings from transformers and the checkpoints the embedding tests share."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from pagebatch.engine.make_model import make_checkpoint

# Base models (``<Family>Model``, embeddings only), each with the pooling its files describe (None: no
# sentence-transformers description, so last-token pooling, normalized).
EMBEDDING_VARIANTS = {
    "llama-embed": dict(arch="llama", embedding=True),
    "mistral-embed": dict(arch="mistral", embedding=True, pooling="mean"),
    "qwen2-embed": dict(arch="qwen2", embedding=True, pooling="last"),
    "qwen3-embed": dict(arch="qwen3", embedding=True, num_kv_heads=1, pooling="mean",
                        matryoshka_dimensions=[16, 32, 64]),
    "qwen3-cls": dict(arch="qwen3", embedding=True, pooling="cls", normalize=False),
    "qwen3-moe-embed": dict(arch="qwen3_moe", embedding=True, pooling="mean"),
    "mixtral-embed": dict(arch="mixtral", embedding=True, num_experts=4),
    "olmoe-embed": dict(arch="olmoe", embedding=True, pooling="mean"),
    "gemma3-embed": dict(arch="gemma3", embedding=True, sliding_window=12, pooling="mean"),  # Gemma3TextModel
    "phi3-embed": dict(arch="phi3", embedding=True, rope_scaling="longrope", max_position_embeddings=1024),
}


def make_embedding_checkpoint(root, variant: str) -> str:
    return str(make_checkpoint(root / variant, **EMBEDDING_VARIANTS[variant]))


def token_prompts(count: int, lengths: list[int], seed: int = 0, vocab: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(lengths[i % len(lengths)])] for i in range(count)]


def transformers_embeddings(path: str, prompts: list[list[int]], method: str, normalize: bool = True
                            ) -> list[torch.Tensor]:
    """transformers' final hidden states (``AutoModel``: the base model of a causal checkpoint too), pooled."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            hidden = model(torch.tensor([prompt])).last_hidden_state[0].float()
            vector = {"last": hidden[-1], "mean": hidden.mean(dim=0), "cls": hidden[0]}[method]
            out.append(F.normalize(vector, dim=0) if normalize else vector)
    return out


def cosine(a, b) -> float:
    return F.cosine_similarity(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               dim=0).item()
