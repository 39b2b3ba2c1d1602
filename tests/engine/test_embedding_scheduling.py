"""Embedding requests share the engine's steps with generation: mixed steps, chunked prefill, preemption,
the prefix cache, and their KV blocks freed as soon as they finish."""
import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.sampling_params import SamplingParams
from tests.engine.embedding_helpers import cosine, make_embedding_checkpoint, token_prompts, transformers_embeddings
from tests.engine.pool_checks import check_invariants

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory):
    return make_embedding_checkpoint(tmp_path_factory.mktemp("embedding-checkpoints"), "qwen3-embed")


def options(**extra):
    return dict(dtype="float32", device="cpu", **{"num_kv_blocks": 256, **extra})


def record_steps(llm):
    """Wrap the runner: each executed batch's (request id, pooling?, new tokens) rows."""
    steps, real = [], llm.engine.runner.execute

    def execute(batch):
        steps.append([(r.request_id, r.pooling is not None, n) for r, n in zip(batch.requests, batch.num_new_tokens)])
        return real(batch)

    llm.engine.runner.execute = execute
    return steps


def run_all(llm, requests):
    """Submit (id, prompt, params) all at once, step until all finished; outputs by id."""
    for rid, prompt, params in requests:
        llm.engine.add_request(prompt, params, request_id=rid)
    outs = {}
    while llm.engine.has_unfinished_requests():
        for out in llm.engine.step():
            outs[out.request_id] = out
    return outs


def test_mixed_steps_change_neither_the_generations_nor_the_embeddings(checkpoint_dir, one_thread):
    path = checkpoint_dir("llama")
    gen_prompts = token_prompts(6, [5, 40, 90], seed=2)
    emb_prompts = token_prompts(8, [3, 33, 150], seed=3)
    generated = LLM(path, **options()).generate(gen_prompts, GREEDY)
    embedded = LLM(path, **options()).embed(emb_prompts)

    llm = LLM(path, **options(max_num_batched_tokens=128))
    steps = record_steps(llm)
    requests = [(f"g{i}", p, GREEDY) for i, p in enumerate(gen_prompts)]
    for i, p in enumerate(emb_prompts):  # interleaved, so embeddings join steps where generations decode
        requests.insert(2 * i + 1, (f"e{i}", p, PoolingParams()))
    outs = run_all(llm, requests)
    assert any(any(pool for _, pool, _ in s) and any(not pool for _, pool, _ in s) for s in steps), "no mixed step"
    assert any(any(not pool and n == 1 for _, pool, n in s) and any(pool for _, pool, _ in s) for s in steps), \
        "no step decoded beside an embedding's prefill"
    assert [outs[f"g{i}"].token_ids for i in range(6)] == [o.token_ids for o in generated]
    for i, want in enumerate(embedded):
        got = outs[f"e{i}"]
        assert got.token_ids == [] and got.embedding is not None
        assert torch.allclose(torch.tensor(got.embedding), torch.tensor(want.embedding), atol=1e-5)
        assert cosine(got.embedding, want.embedding) >= 0.999999
    assert llm.engine.blocks.num_free_blocks == llm.engine.num_blocks
    check_invariants(llm.engine.blocks, [])


@pytest.mark.parametrize("method", ["mean", "last", "cls"])
def test_a_prompt_longer_than_the_step_budget_pools_over_all_its_chunks(mean_model, method, one_thread):
    prompts = token_prompts(3, [300, 97, 64], seed=4)
    llm = LLM(mean_model, **options(max_num_batched_tokens=32))
    steps = record_steps(llm)
    outs = llm.embed(prompts, PoolingParams(pooling=method))
    chunks = [sum(1 for s in steps for rid, _, _ in s if rid == o.request_id) for o in outs]
    assert chunks[0] >= 300 // 32, "the long prompt was meant to be prefilled in chunks"
    refs = transformers_embeddings(mean_model, prompts, method)
    assert all(cosine(o.embedding, r) >= 0.9999 for o, r in zip(outs, refs))


def test_preempted_embeddings_start_over_and_stay_exact(checkpoint_dir, one_thread):
    path = checkpoint_dir("qwen3")
    prompts = token_prompts(6, [150, 120, 170], seed=5)
    llm = LLM(path, **options(num_kv_blocks=24, max_num_batched_tokens=64, enable_prefix_caching=False))
    scheduler, real = llm.engine.scheduler, llm.engine.scheduler._preempt
    partial = []  # pooling requests preempted with part of their prompt pooled already

    def preempt(req):
        partial.append(req.pooling is not None and req.num_computed_tokens > 0)
        return real(req)

    scheduler._preempt = preempt
    gen = [(f"g{i}", p[:20], SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)) for i, p in enumerate(prompts)]
    emb = [(f"e{i}", p, PoolingParams(pooling="mean")) for i, p in enumerate(prompts)]
    outs = run_all(llm, [r for pair in zip(gen, emb) for r in pair])
    assert any(partial), "the small pool was meant to preempt an embedding mid-prefill"
    refs = transformers_embeddings(path, prompts, "mean")
    assert all(cosine(outs[f"e{i}"].embedding, r) >= 0.9999 for i, r in enumerate(refs))
    assert all(outs[f"g{i}"].ok and len(outs[f"g{i}"].token_ids) == 60 for i in range(6))
    assert llm.engine.blocks.num_free_blocks == llm.engine.num_blocks


def test_last_token_pooling_reads_the_prefix_cache_mean_pooling_does_not(mean_model, one_thread):
    llm = LLM(mean_model, **options())
    instruction = list(range(10, 10 + 70))  # 4 full blocks + 6 tokens, shared by every input
    prompts = [instruction + [200 + i, 300 + i] for i in range(3)]
    llm.embed(prompts[:1], PoolingParams(pooling="last"))  # fills the cache
    last = llm.embed(prompts, PoolingParams(pooling="last"))
    mean = llm.embed(prompts, PoolingParams(pooling="mean"))
    assert [o.num_cached_tokens for o in last] == [64] * 3
    assert [o.num_cached_tokens for o in mean] == [0] * 3  # mean needs every token's hidden state
    for outs, method in ((last, "last"), (mean, "mean")):
        refs = transformers_embeddings(mean_model, prompts, method)
        assert all(cosine(o.embedding, r) >= 0.9999 for o, r in zip(outs, refs))


def test_an_embedding_frees_its_blocks_the_step_it_finishes(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), **options(enable_prefix_caching=False))
    engine = llm.engine
    engine.add_request([7] * 40, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), request_id="long")
    engine.step()
    long_blocks = len(engine.requests["long"].block_table)
    engine.add_request([9] * 100, PoolingParams(), request_id="emb")
    finished = []
    while not finished:
        finished = [o for o in engine.step() if o.request_id == "emb"]
        assert engine.requests["long"].num_output_tokens < 200
    assert finished[0].embedding is not None and "emb" not in engine.requests
    live = list(engine.requests.values())
    check_invariants(engine.blocks, live)
    assert engine.blocks.num_used_blocks == sum(len(r.block_table) for r in live) <= long_blocks + 1
    assert engine.stats().generation_tokens_total == engine.requests["long"].num_output_tokens  # nothing sampled for it
    engine.abort_request("long")
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_a_request_that_breaks_the_forward_pass_leaves_the_embeddings_beside_it_exact(checkpoint_dir, one_thread):
    path = checkpoint_dir("llama")
    prompts = token_prompts(4, [30, 70], seed=6)
    alone = LLM(path, **options()).embed(prompts, PoolingParams(pooling="mean"))
    llm = LLM(path, **options())
    real = llm.engine.runner.execute

    def execute(batch):
        if any(r.request_id == "poison" for r in batch.requests):
            raise RuntimeError("poisoned forward pass")
        return real(batch)

    llm.engine.runner.execute = execute
    requests = [(f"e{i}", p, PoolingParams(pooling="mean")) for i, p in enumerate(prompts)]
    requests.insert(2, ("poison", [5] * 20, GREEDY))
    outs = run_all(llm, requests)
    assert outs["poison"].error_code == "engine_error"
    for i, want in enumerate(alone):
        assert cosine(outs[f"e{i}"].embedding, want.embedding) >= 0.999999
    assert llm.engine.blocks.num_free_blocks == llm.engine.num_blocks
