"""Answers restricted to a label set: only listed labels come out, with the engine's own logprobs."""
import math

import pytest

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams

LABELS = ["positive", "negative", "neutral", "pos"]


@pytest.fixture(scope="module")
def llm(checkpoint_dir):
    return LLM(checkpoint_dir("qwen3"), dtype="float32", device="cpu")


def _prompts(n):
    return [[{"role": "user", "content": f"review {i}: the price was {'good' if i % 2 else 'bad'}"}] for i in range(n)]


def test_greedy_and_sampled_answers_are_always_labels(llm):
    greedy = llm.generate(_prompts(12), SamplingParams(temperature=0, choices=LABELS))
    sampled = llm.generate(_prompts(40), [SamplingParams(temperature=1.5, seed=i, choices=LABELS) for i in range(40)])
    for out in greedy + sampled:
        assert out.finish_reason == "stop"
        assert out.text in LABELS
    assert len({o.text for o in sampled}) > 1, "sampling should reach more than one label"


def test_label_costs_only_its_own_tokens(llm):
    out = llm.generate(_prompts(1), SamplingParams(temperature=0, choices=LABELS, logprobs=0))[0]
    ids = llm.tokenizer(out.text, add_special_tokens=False)["input_ids"]
    # a label that is a prefix of another ("pos"/"positive") needs one closing token
    assert out.token_ids[: len(ids)] == ids and len(out.token_ids) <= len(ids) + 1


def test_label_logprobs_are_the_models_logprobs_of_those_tokens(llm, checkpoint_dir):
    """Logprobs come from the model's unconstrained distribution (checked by teacher forcing in transformers)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = llm.generate(_prompts(1), SamplingParams(temperature=0, choices=["negative", "neutral"], logprobs=0))[0]
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir("qwen3"), dtype=torch.float32).eval()
    ids = out.prompt_token_ids + out.token_ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits, dim=-1)
    start = len(out.prompt_token_ids) - 1
    for step, token in enumerate(out.token_ids):
        assert abs(out.logprobs[step].logprob - want[start + step, token].item()) < 1e-4
    assert math.isfinite(sum(lp.logprob for lp in out.logprobs))


def test_bad_choices_fail_the_request_alone(llm):
    outs = llm.generate(["a", "b"], [SamplingParams(choices=[]), SamplingParams(temperature=0, choices=["yes"])])
    assert outs[0].finish_reason == "error" and "choices" in outs[0].error
    assert outs[1].text == "yes"


def test_stop_strings_do_not_affect_labels(llm):
    out = llm.generate(_prompts(1), SamplingParams(temperature=0, choices=LABELS, stop=["zz"]))[0]
    assert out.text in LABELS
