import os

import pytest
import torch

from pagebatch.engine.make_model import make_checkpoint

torch.set_num_threads(min(2, os.cpu_count() or 1))

CHECKPOINT_VARIANTS = {
    "llama": dict(arch="llama"),
    "llama3-rope": dict(arch="llama", rope_scaling="llama3", max_position_embeddings=2048),
    "mistral": dict(arch="mistral"),
    "qwen2": dict(arch="qwen2", tie_word_embeddings=True),
    "qwen3": dict(arch="qwen3", num_kv_heads=1),
    # layer 1 a dense MLP (mlp_only_layers), layer 0 eight experts, top-2 renormalized (norm_topk_prob)
    "qwen3-moe": dict(arch="qwen3_moe", config_overrides=dict(mlp_only_layers=[1])),
    "mixtral": dict(arch="mixtral", num_experts=4),  # softmax, top-2, renormalized
    "olmoe": dict(arch="olmoe", experts_per_token=3, config_overrides=dict(clip_qkv=0.5)),  # q/k/v clamped
    # a window shorter than most prompts on layer 0 (global layer 1); logits soft-capped
    "gemma3": dict(arch="gemma3", sliding_window=40, config_overrides=dict(final_logit_softcapping=10.0)),
    "phi3": dict(arch="phi3", sliding_window=64),
    # 128k recipe: the long factors past position 64 (or for prompts longer than that), partial rotary
    "phi3-longrope": dict(arch="phi3", rope_scaling="longrope", max_position_embeddings=2048, partial_rotary_factor=0.5),
}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, str] = {}

    def get(variant: str = "llama") -> str:
        if variant not in made:
            made[variant] = str(make_checkpoint(root / variant, **CHECKPOINT_VARIANTS[variant]))
        return made[variant]

    return get
