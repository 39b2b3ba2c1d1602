"""The newer families beyond greedy parity: mixture-of-experts weights in every layout a checkpoint comes in (one
tensor per expert, fused, a GGUF file), and the configurations that cannot be served refused with a reason."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pagebatch.engine.llm import LLM
from pagebatch.engine.make_model import ARCHITECTURES, make_checkpoint
from pagebatch.engine.models import CheckpointError
from pagebatch.engine.sampling_params import SamplingParams
from tests.engine.gguf_writer import write_qwen3_moe_gguf
from tests.engine.parity import compare_greedy, mixed_prompts, transformers_greedy

PARAMS = SamplingParams(temperature=0, max_tokens=8)


def fused_copy(src, dst):
    """The checkpoint as transformers 5 holds it in memory: each layer's experts as two stacked tensors."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_fused_expert_tensors_load_as_per_expert_ones(checkpoint_dir, tmp_path):
    """Mixtral's published layout (block_sparse_moe.experts.<e>.w1/w2/w3) and the fused one (mlp.experts.gate_up_proj,
    mlp.experts.down_proj) give the same tokens."""
    src = checkpoint_dir("mixtral")
    with safe_open(f"{src}/model.safetensors", "pt") as f:
        assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in f.keys()
    fused = fused_copy(src, tmp_path / "fused")
    with safe_open(str(fused / "model.safetensors"), "pt") as f:
        assert "model.layers.0.mlp.experts.gate_up_proj" in f.keys()
    prompts = mixed_prompts(512)[:10]
    want = [o.token_ids for o in LLM(src, dtype="float32", device="cpu").generate(prompts, PARAMS)]
    assert [o.token_ids for o in LLM(str(fused), dtype="float32", device="cpu").generate(prompts, PARAMS)] == want


def test_qwen3_moe_gguf_matches_transformers_on_the_original(tmp_path, monkeypatch):
    """A Qwen3-MoE GGUF (experts stacked as llama.cpp writes them) converted through transformers, whose conversion
    holds the experts fused, serves the tokens transformers makes from the checkpoint it was written from.
    transformers reads no expert width from a qwen3moe GGUF, so the experts are its default's 768 wide."""
    monkeypatch.setenv("PAGEBATCH_CACHE_DIR", str(tmp_path / "cache"))
    src = make_checkpoint(tmp_path / "src", arch="qwen3_moe", num_experts=4, intermediate_size=768)
    gguf_file = write_qwen3_moe_gguf(src, tmp_path / "tiny-qwen3-moe.gguf")
    prompts = mixed_prompts(512)[:8]
    llm = LLM(str(gguf_file), dtype="float32", device="cpu")
    assert llm.engine.spec.moe is not None and llm.engine.spec.moe.renormalize
    outs = llm.generate(prompts, PARAMS)
    assert not compare_greedy(outs, transformers_greedy(str(src), prompts, PARAMS.max_tokens))


def test_make_model_command_offers_every_architecture():
    from pagebatch.jobs.commands.cli import MAKE_MODEL_ARCHS, build_parser

    assert MAKE_MODEL_ARCHS == tuple(ARCHITECTURES)
    args = build_parser().parse_args(["make-model", "/tmp/x", "--arch", "gemma3", "--sliding-window", "64"])
    assert args.arch == "gemma3" and args.sliding_window == 64


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


@pytest.mark.parametrize("changes,reason", [
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (dict(architectures=["Gemma3ForConditionalGeneration"]), "image-text model.*Gemma3ForCausalLM"),
    (dict(hidden_activation="gelu"), "unsupported activation 'gelu'"),
])
def test_unservable_gemma3_configs_are_refused_with_the_reason(checkpoint_dir, tmp_path, changes, reason):
    path = _edit_config(checkpoint_dir("gemma3"), tmp_path / "m", **changes)
    with pytest.raises(CheckpointError, match=reason):
        LLM(path, device="cpu")
