"""The path an engine serves by: the start-up check of the kernels compiled for this machine (here the C++ decode
attention) and of the CUDA-graph replay, and what the engine reports about both."""
from __future__ import annotations

import logging

import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.kernels import cpu_attention, reference

needs_kernel = pytest.mark.skipif(not cpu_attention.available(), reason="CPU attention kernel could not be built")
PROMPTS = ["the engine checks its kernels before it serves", "a second prompt", "three"]


def tokens(llm: LLM) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))]


@needs_kernel
def test_the_cpu_kernel_is_checked_and_reported(checkpoint_dir) -> None:
    llm = LLM(checkpoint_dir("gemma3"), dtype="float32", device="cpu", kernels="cpu")
    path = llm.engine.serving_path()
    assert path.kernels == "cpu" and path.ops["paged_attention"] == "cpu" and path.ops["rms_norm"] == "torch"
    [check] = path.self_check
    assert check.op == "paged_attention" and check.passed
    assert path.cuda_graphs == "off" and "CUDA" in path.cuda_graphs_detail
    assert llm.engine.model.ops is cpu_attention


@needs_kernel
def test_a_wrong_cpu_kernel_falls_back_to_the_reference(checkpoint_dir, monkeypatch, caplog) -> None:
    path = checkpoint_dir("gemma3")
    want = tokens(LLM(path, dtype="float32", device="cpu", kernels="torch"))
    correct = cpu_attention.paged_attention

    def wrong(q, k_cache, v_cache, meta, scale, window=None):
        out = correct(q, k_cache, v_cache, meta, scale, window=None)  # ignores the sliding window
        return out if not window else out * 0.5

    monkeypatch.setattr(cpu_attention, "paged_attention", wrong)
    with caplog.at_level(logging.WARNING, logger="pagebatch.kernels.self_check"):
        llm = LLM(path, dtype="float32", device="cpu", kernels="cpu")
    assert llm.engine.model.ops.paged_attention is reference.paged_attention
    assert llm.engine.serving_path().as_dict()["ops"]["paged_attention"] == "torch-fallback"
    assert sum("kernel paged_attention of the cpu backend" in r.getMessage() for r in caplog.records) == 1
    assert tokens(llm) == want


def test_decode_graph_replay_is_checked_against_the_eager_step(checkpoint_dir, monkeypatch) -> None:
    """Graph-shaped decode inputs (run eagerly here: no CUDA) agree with the plain eager step; a replay that
    disagrees sends decode steps back to eager, and serving goes on with the same tokens."""
    path = checkpoint_dir("phi3-longrope")
    want = tokens(LLM(path, dtype="float32", device="cpu", kernels="torch"))
    llm = LLM(path, dtype="float32", device="cpu", kernels="torch", max_num_seqs=4)
    runner = llm.engine.runner
    runner.use_decode_graphs(4, llm.engine.max_model_len, capture=False)
    assert runner.check_decode_graphs() and runner.decode_graphs is not None
    assert llm.engine.serving_path().cuda_graphs == "padded-eager"
    graphs = runner.decode_graphs
    replay = graphs.run
    monkeypatch.setattr(graphs, "run", lambda *a, **k: replay(*a, **k) + torch.linspace(0, 1, graphs.model.embed.shape[0]))
    assert not runner.check_decode_graphs()
    path_now = llm.engine.serving_path()
    assert runner.decode_graphs is None and path_now.cuda_graphs == "eager-fallback"
    assert "differ from the eager step" in path_now.cuda_graphs_detail
    assert tokens(llm) == want


def test_longrope_prompts_on_either_side_of_the_edge_share_no_cached_blocks(checkpoint_dir) -> None:
    """A short prompt's blocks hold keys rotated by the short factors; a longer prompt with the same start rotates
    them by the long ones, so it must not read them from the prefix cache (transformers recomputes them)."""
    from tests.engine.parity import compare_greedy, transformers_greedy

    path = checkpoint_dir("phi3-longrope")  # original_max_position_embeddings = 64
    start = list(range(5, 53))  # 48 tokens: three full blocks
    short, long = start + [7, 8], start + list(range(100, 140))  # 50 and 88 tokens
    llm = LLM(path, dtype="float32", device="cpu", enable_prefix_caching=True)
    outs = [llm.generate([p], SamplingParams(temperature=0, max_tokens=10))[0] for p in (short, long)]
    assert outs[1].num_cached_tokens == 0
    assert not compare_greedy(outs, transformers_greedy(path, [short, long], 10))
    again = llm.generate([long + [9]], SamplingParams(temperature=0, max_tokens=1))[0]
    assert again.num_cached_tokens == 80  # blocks of the same regime are shared
