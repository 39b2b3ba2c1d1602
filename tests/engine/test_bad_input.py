"""A bad request fails alone with a clear message; the rest of the batch finishes."""
import pytest

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams

GOOD = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(checkpoint_dir):
    return LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", num_kv_blocks=64, max_model_len=512)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ("", GOOD, "empty"),
        ([], GOOD, "empty"),
        ([1, 2, 99999], GOOD, "outside the model's vocabulary"),
        ([-1, 2], GOOD, "outside the model's vocabulary"),
        ([5] * 600, GOOD, "context is 512 tokens"),
        ("hi", SamplingParams(max_tokens=0), "max_tokens"),
        ("hi", SamplingParams(temperature=-1), "temperature"),
        ("hi", SamplingParams(top_p=0), "top_p"),
        ("hi", SamplingParams(top_k=-5), "top_k"),
        ("hi", SamplingParams(logprobs=50), "logprobs"),
        ("hi", SamplingParams(stop=[""]), "stop"),
        ("hi", SamplingParams(stop_token_ids=[10**6]), "stop_token_ids"),
        ("hi", SamplingParams(seed="x"), "seed"),
        ([3] * 500, SamplingParams(max_tokens=2000), None),  # capped by the context, fits the pool: fine
        (12.5, GOOD, "a prompt must be"),
    ],
)
def test_bad_request_fails_alone(llm, prompt, params, message):
    outs = llm.generate(["good one", prompt, [7, 8, 9]], [GOOD, params, GOOD])
    assert outs[0].ok and outs[2].ok and len(outs[0].token_ids) == 5
    if message is None:
        assert outs[1].ok, outs[1].error
    else:
        assert outs[1].finish_reason == "error"
        assert message in outs[1].error
        want_code = "context_length_exceeded" if "context" in message else "invalid_request"
        assert outs[1].error_code == want_code


def test_request_larger_than_the_pool_is_rejected(checkpoint_dir):
    llm = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", num_kv_blocks=4)
    outs = llm.generate([[5] * 60, [5] * 10], SamplingParams(temperature=0, max_tokens=20))
    assert outs[0].finish_reason == "error" and "whole pool holds 64" in outs[0].error
    assert outs[0].error_code == "request_too_large"
    assert outs[1].ok


def test_mismatched_params_list_is_a_usage_error(llm):
    with pytest.raises(ValueError, match="one per prompt"):
        llm.generate(["a", "b"], [GOOD])
