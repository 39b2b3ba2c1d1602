"""The engine with kernels="cpu" (the C++ decode attention) matches transformers' greedy tokens."""
import pytest

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.kernels import cpu_attention, dispatch
from tests.engine.parity import compare_greedy, mixed_prompts, transformers_greedy

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="the CPU attention kernel could not be built")


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_matches_transformers_with_the_cpu_kernel(checkpoint_dir, arch):
    path = checkpoint_dir(arch)
    llm = LLM(path, dtype="float32", device="cpu", kernels="cpu", max_num_batched_tokens=256)
    assert llm.engine.model.ops is cpu_attention
    prompts = mixed_prompts(llm.engine.spec.vocab_size)[::3]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12))  # EOS on, as transformers stops
    compare_greedy(outs, transformers_greedy(path, prompts, 12))


def test_cpu_choice_is_for_cpu_tensors():
    assert dispatch.select_backend("cpu", "cpu").name == "cpu"
    with pytest.raises(ValueError):
        dispatch.select_backend("cpu", "cuda")
