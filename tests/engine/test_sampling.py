import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def llm(checkpoint_dir):
    return LLM(checkpoint_dir("llama"), dtype="float32", device="cpu")


def test_seeded_request_is_identical_alone_and_in_a_batch_of_64(llm):
    prompt = "the batch model token prompt"
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate([prompt], params)[0].token_ids
    others = [
        SamplingParams(temperature=1.0, seed=None if i % 2 else i, max_tokens=8 + i % 17, ignore_eos=True)
        for i in range(63)
    ]
    prompts = [f"request {i} " * (1 + i % 9) for i in range(63)]
    outs = llm.generate(prompts[:20] + [prompt] + prompts[20:], others[:20] + [params] + others[20:])
    assert outs[20].token_ids == alone
    assert len(alone) == 24


def test_different_seeds_give_different_samples(llm):
    outs = llm.generate(["hello"] * 2, [SamplingParams(temperature=1.0, seed=s, max_tokens=16, ignore_eos=True) for s in (1, 2)])
    assert outs[0].token_ids != outs[1].token_ids


def test_top_k_one_equals_greedy(llm):
    greedy = llm.generate(["café naïve"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    topk1 = llm.generate(["café naïve"], SamplingParams(temperature=1.5, top_k=1, seed=3, max_tokens=12, ignore_eos=True))[0]
    assert topk1.token_ids == greedy.token_ids


def test_sampled_tokens_stay_inside_top_k_and_top_p(llm):
    params = SamplingParams(temperature=1.0, top_k=3, seed=7, max_tokens=20, logprobs=20, ignore_eos=True)
    out = llm.generate(["the quality of the"], params)[0]
    for lp in out.logprobs:
        assert lp.token_id in [alt.token_id for alt in lp.top[:3]]
    params = SamplingParams(temperature=1.0, top_p=0.05, seed=7, max_tokens=20, logprobs=20, ignore_eos=True)
    out = llm.generate(["the quality of the"], params)[0]
    for lp in out.logprobs:
        mass_above = sum(torch.tensor(alt.logprob).exp().item() for alt in lp.top if alt.logprob > lp.logprob)
        assert mass_above < 0.05 + 1e-6


def test_sampling_follows_the_distribution(llm):
    """Sampled first tokens should be roughly as frequent as their probabilities."""
    prompt = "positive negative"
    probe = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, logprobs=1))[0].logprobs[0]
    p_top = torch.tensor(probe.logprob).exp().item()
    outs = llm.generate([prompt] * 400, [SamplingParams(temperature=1.0, seed=s, max_tokens=1) for s in range(400)])
    freq = sum(o.token_ids[0] == probe.token_id for o in outs) / 400
    assert abs(freq - p_top) < 4 * (p_top * (1 - p_top) / 400) ** 0.5 + 0.01


def test_stop_token_ids_and_finish_reasons(llm):
    out = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 30
    stop_at = out.token_ids[5]
    first = out.token_ids.index(stop_at)
    cut = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=[stop_at]))[0]
    assert cut.finish_reason == "stop" and cut.token_ids == out.token_ids[: first + 1]


def test_stop_strings_are_found_across_tokens_and_cut(llm):
    full = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0]
    text = full.text
    assert len(text) > 12
    stop = text[7:12]  # most likely spans a token boundary
    out = llm.generate(["hello"], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == text[: text.index(stop)]
    assert stop not in out.text


def test_chat_messages_use_the_chat_template(llm):
    messages = [{"role": "user", "content": "label this review: great price"}]
    rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = llm.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    a, b = llm.generate([messages, ids], SamplingParams(temperature=0, max_tokens=8))
    assert a.prompt_token_ids == ids and a.token_ids == b.token_ids
