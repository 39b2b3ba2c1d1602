"""The engine end to end with kernels="triton" against kernels="torch" (greedy tokens equal)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pagebatch.kernels import reference, triton_ops


def test_engine_generates_the_same_tokens_with_triton_kernels(tmp_path: Path, device: str) -> None:
    """Whole-model check: chunked prefill beside decodes, GQA, qk-norm on strided views (qwen3)."""
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.sampling_params import SamplingParams
    from pagebatch.engine.make_model import make_checkpoint

    model = make_checkpoint(tmp_path / "m", arch="qwen3", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    prompts = ["the paged attention kernel serves a mixed batch", "short", "a third prompt, longer than the other two"]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    tokens = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(model), dtype="float32", device=device, block_size=8, max_num_batched_tokens=24, kernels=backend)
        assert llm.engine.model.ops is (triton_ops if backend == "triton" else reference)
        tokens[backend] = [out.token_ids for out in llm.generate(prompts, params)]
    assert tokens["triton"] == tokens["torch"]


@pytest.mark.parametrize(
    "options",
    [
        dict(enable_prefix_caching=True),
        dict(max_num_batched_tokens=40),  # chunked prefill beside decodes
        # preemption (prompts sharing a prefix now prefill it once, so the pool is smaller than it used to be)
        dict(num_kv_blocks=16, block_size=8, max_num_batched_tokens=256),
    ],
    ids=["prefix-cache", "chunked-prefill", "preemption"],
)
def test_engine_with_triton_matches_transformers(tmp_path_factory, device: str, options) -> None:
    """The parity check of tests/engine, on the Triton path, for a tiny model kept small for the interpreter."""
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.sampling_params import SamplingParams
    from pagebatch.engine.make_model import make_checkpoint
    from tests.engine.parity import compare_greedy, transformers_greedy

    root = tmp_path_factory.getbasetemp() / "triton-parity-llama"
    if not (root / "config.json").exists():
        make_checkpoint(root, arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1)
    prefix = list(range(40, 100))
    prompts = [[7], list(range(3, 20)), prefix + [5, 6], prefix + [9] * 11, list(range(200, 290)), prefix + [8]]
    new_tokens = 16 if "num_kv_blocks" in options else 6  # decodes that outgrow the pool
    refs = transformers_greedy(str(root), prompts, max_new_tokens=new_tokens)
    llm = LLM(str(root), dtype="float32", device=device, kernels="triton", **options)
    assert llm.engine.model.ops is triton_ops
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=new_tokens))
    for note in compare_greedy(outs, refs):
        warnings.warn(f"tolerated divergence at a near-tie: {note}", stacklevel=1)
    if "num_kv_blocks" in options:
        assert llm.engine.scheduler.num_preemptions > 0


def test_padded_decode_graph_inputs_on_triton(tmp_path: Path, device: str) -> None:
    """The CUDA-graph decode path's inputs (padding rows on a scratch block, max_context_len = the model's
    context) through the Triton kernels, run eagerly: the same tokens as the unpadded engine."""
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.sampling_params import SamplingParams
    from pagebatch.engine.make_model import make_checkpoint

    model = make_checkpoint(tmp_path / "m", arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            max_position_embeddings=1024)
    prompts = ["one", "two words", "three words here"]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    want = [o.token_ids for o in LLM(str(model), dtype="float32", device=device, block_size=8, kernels="triton")
            .generate(prompts, params)]
    llm = LLM(str(model), dtype="float32", device=device, block_size=8, max_num_seqs=4, kernels="triton")
    engine = llm.engine
    engine.runner.use_decode_graphs(4, engine.max_model_len, capture=False)
    assert [o.token_ids for o in llm.generate(prompts, params)] == want
    assert engine.runner.decode_graphs.context_lens[3].item() == 1


@pytest.mark.parametrize("arch", ["gemma3", "mixtral"])
def test_newer_families_on_triton_match_transformers(tmp_path_factory, device: str, arch: str) -> None:
    """Gemma 3 (an 8-token window on layer 0, under prompts up to 90 tokens, chunked) and a mixture of experts
    through the fused MoE kernel, on the Triton path, against transformers."""
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.make_model import make_checkpoint
    from pagebatch.engine.sampling_params import SamplingParams
    from tests.engine.parity import compare_greedy, transformers_greedy

    root = tmp_path_factory.getbasetemp() / f"triton-parity-{arch}"
    if not (root / "config.json").exists():
        extra = dict(sliding_window=8) if arch == "gemma3" else dict(num_experts=4, intermediate_size=32)
        make_checkpoint(root, arch=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, **extra)
    prompts = [[7], list(range(3, 20)), list(range(200, 290)), list(range(40, 100)) + [5, 6]]
    refs = transformers_greedy(str(root), prompts, max_new_tokens=5)
    llm = LLM(str(root), dtype="float32", device=device, kernels="triton", max_num_batched_tokens=40, block_size=8)
    assert llm.engine.model.ops is triton_ops
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5))
    for note in compare_greedy(outs, refs):
        warnings.warn(f"tolerated divergence at a near-tie: {note}", stacklevel=1)
