from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def test_shared_prefix_is_served_from_cache_and_reported(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", block_size=16)
    instruction = list(range(10, 10 + 200))  # a long shared instruction: 12 full blocks + 8 tokens
    first = llm.generate([instruction + [300, 301]], PARAMS)[0]
    assert first.num_cached_tokens == 0
    before = llm.engine.stats().prompt_tokens_total
    outs = llm.generate([instruction + [400 + i] for i in range(8)], PARAMS)
    computed = llm.engine.stats().prompt_tokens_total - before
    assert [o.num_cached_tokens for o in outs] == [192] * 8
    assert computed == 8 * (201 - 192), "only the uncached tail of each prompt is computed"
    stats = llm.engine.stats()
    assert stats.kv_blocks_used == 0 and stats.kv_blocks_cached > 0


def test_cache_does_not_change_results(checkpoint_dir):
    path = checkpoint_dir("qwen2")
    prompts = [[5] * 40 + [i, i + 1] for i in range(6)]
    with_cache = LLM(path, dtype="float32", device="cpu", enable_prefix_caching=True)
    with_cache.generate(prompts[:1], PARAMS)
    cached = with_cache.generate(prompts, PARAMS)
    fresh = LLM(path, dtype="float32", device="cpu", enable_prefix_caching=False).generate(prompts, PARAMS)
    assert [o.token_ids for o in cached] == [o.token_ids for o in fresh]
    assert all(o.num_cached_tokens == 32 for o in cached) and all(o.num_cached_tokens == 0 for o in fresh)


def test_requests_arriving_together_share_a_prompt_prefilled_once(checkpoint_dir):
    """n choices of one prompt (or lines sharing an instruction) submitted at once: the first computes the
    shared blocks, the others wait one step and read them from the cache."""
    llm = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", block_size=16)
    prompt = list(range(10, 10 + 122))  # 7 full blocks + 10 tokens
    outs = llm.generate([prompt] * 4, PARAMS)
    assert sorted(o.num_cached_tokens for o in outs) == [0, 112, 112, 112]
    assert len({tuple(o.token_ids) for o in outs}) == 1
