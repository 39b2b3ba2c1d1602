import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from pagebatch.engine.llm import LLM
from pagebatch.engine.models import CheckpointError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture_is_named(checkpoint_dir, tmp_path):
    path = _copy(checkpoint_dir("llama"), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture.*GPT2LMHeadModel"):
        LLM(str(path), device="cpu")


def test_missing_tensor_is_named(checkpoint_dir, tmp_path):
    path = _copy(checkpoint_dir("llama"), tmp_path / "m")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.down_proj.weight"):
        LLM(str(path), device="cpu")


def test_wrong_shape_is_named(checkpoint_dir, tmp_path):
    path = _copy(checkpoint_dir("llama"), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 99
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gate_proj.weight.*shape"):
        LLM(str(path), device="cpu")


def test_missing_weights_and_config(checkpoint_dir, tmp_path):
    path = _copy(checkpoint_dir("llama"), tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        LLM(str(path), device="cpu")
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        LLM(str(path), device="cpu")


def test_corrupt_weights(checkpoint_dir, tmp_path):
    path = _copy(checkpoint_dir("llama"), tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        LLM(str(path), device="cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs(checkpoint_dir, dtype):
    from pagebatch.engine.sampling_params import SamplingParams

    llm = LLM(checkpoint_dir("qwen2"), dtype=dtype, device="cpu")
    out = llm.generate(["hello there"] * 3, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert all(o.ok and len(o.token_ids) == 6 for o in out)
    assert out[0].token_ids == out[1].token_ids
