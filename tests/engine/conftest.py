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
