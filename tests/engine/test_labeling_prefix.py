"""A small labeling run: one long shared instruction, many short rows, answers constrained to a label set.

The instruction is computed once and served from the prefix cache to every other row (>= 95% of its tokens over
the run), every answer is a label, and the CPU backend's shared-prefix attention (rows that share cached blocks
attend them together) gives the same greedy labels as the reference backend, which attends row by row.
"""
import pytest

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.kernels import cpu_attention

LABELS = ["syntax", "data", "functions", "objects", "errors"]
INSTRUCTION = " ".join(f"Rule {i}: answer with one of {', '.join(LABELS)}, the topic the sentence is about."
                       for i in range(40))
ROWS = 60


def _chats():
    return [[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": f"row {i}: values of {i} kinds"}]
            for i in range(ROWS)]


def _run(model: str, kernels: str):
    llm = LLM(model, dtype="float32", device="cpu", kernels=kernels)
    outs = llm.generate(_chats(), SamplingParams(temperature=0, choices=LABELS))
    prompts = [llm.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True) for c in _chats()]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    return outs, prompts


def _shared_len(prompts):
    n = min(map(len, prompts))
    while any(p[:n] != prompts[0][:n] for p in prompts):
        n -= 1
    return n


@pytest.mark.skipif(not cpu_attention.available(), reason="CPU attention kernel could not be built")
def test_instruction_served_from_cache_and_answers_are_labels(checkpoint_dir):
    model = checkpoint_dir("llama")
    outs, prompts = _run(model, "cpu")
    shared = _shared_len(prompts)
    assert shared > 500
    assert all(o.text in LABELS and o.finish_reason == "stop" for o in outs)
    served = sum(min(o.num_cached_tokens, shared) for o in outs)
    assert served >= 0.95 * shared * ROWS, f"{served} of {shared} x {ROWS} instruction tokens from the cache"
    reference_outs, _ = _run(model, "torch")
    assert [o.text for o in outs] == [o.text for o in reference_outs]


def test_a_label_settled_by_its_first_token_costs_no_more_passes(checkpoint_dir):
    """Once one label is left with nothing to choose on the way to its end, its remaining tokens are appended
    without forward passes: a batch of short rows finishes in the step that prefills it, with the tokens and text
    of a run that goes token by token (logprobs need each token's pass)."""
    llm = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu")
    ids = [llm.tokenizer(label, add_special_tokens=False)["input_ids"] for label in LABELS]
    assert len({i[0] for i in ids}) == len(LABELS)  # the first token settles the label
    chats = [[{"role": "user", "content": f"row {i}"}] for i in range(8)]
    before = llm.engine.stats().num_steps
    fast = llm.generate(chats, SamplingParams(temperature=0, choices=LABELS))
    assert llm.engine.stats().num_steps - before == 1
    slow = llm.generate(chats, SamplingParams(temperature=0, choices=LABELS, logprobs=0))
    assert [o.token_ids for o in fast] == [o.token_ids for o in slow]
    assert [o.text for o in fast] == [o.text for o in slow]
    assert all(o.text in LABELS and o.finish_reason == "stop" for o in fast)
    assert any(len(o.token_ids) > 1 for o in fast), "no multi-token label was chosen: the test shows nothing"
