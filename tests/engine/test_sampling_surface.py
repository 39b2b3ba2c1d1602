"""Penalties, logit_bias and min_tokens: checked against references computed here from the model's own logits;
OpenAI's rule that prompt + max_tokens must fit the context."""
import pytest
import torch

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.sampler import apply_logits_adjustments

MAX_MODEL_LEN = 256
PROMPT = "the batch model token prompt cache"


@pytest.fixture(scope="module")
def llm(checkpoint_dir):
    return LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN)


@pytest.fixture
def steps(llm):
    """Records, for each sampling step: the raw logits, the requests' token ids so far, the adjusted logits."""
    engine = llm.engine
    real = engine.sampler
    seen = []

    def spy(logits, requests, allowed=None):
        order = sorted(range(len(requests)), key=lambda i: requests[i].logits_state is not None)  # plain rows first
        seen.append((logits[order].clone(), [list(requests[i].token_ids) for i in order],
                     [requests[i].num_prompt_tokens for i in order], apply_logits_adjustments(logits, requests)[order]))
        return real(logits, requests, allowed)

    engine.sampler = spy
    yield seen
    engine.sampler = real


def reference(raw: torch.Tensor, tokens: list[int], num_prompt: int, p: SamplingParams) -> torch.Tensor:
    """The adjusted logits of one row, computed token by token as the APIs define them."""
    out = raw.clone()
    generated = tokens[num_prompt:]
    for t in set(tokens):  # repetition penalty: prompt and generated tokens
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t in set(generated):
        out[t] -= p.frequency_penalty * generated.count(t) + p.presence_penalty
    for t, b in (p.logit_bias or {}).items():
        out[t] += b
    return out


@pytest.mark.parametrize("fields", [
    dict(presence_penalty=1.5),
    dict(frequency_penalty=2.0),
    dict(presence_penalty=-0.7, frequency_penalty=0.9),
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.5),
    dict(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.5, logit_bias={7: 3.0, 11: -2.0}),
], ids=lambda f: ",".join(f))
def test_penalties_match_the_reference_and_greedy_follows_them(llm, steps, fields):
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, **fields)
    # a penalized row beside an unpenalized one: only its own row changes
    base, out = llm.generate([PROMPT, PROMPT], [plain, params])
    assert len(steps) == 12
    for raw, tokens, num_prompt, adjusted in steps:
        assert torch.equal(adjusted[0], raw[0])  # the plain row is untouched
        want = reference(raw[1], tokens[1], num_prompt[1], params)
        torch.testing.assert_close(adjusted[1], want, rtol=1e-5, atol=1e-5)
    chosen = [int(adjusted[1].argmax()) for _, _, _, adjusted in steps]
    assert out.token_ids == chosen  # greedy takes the argmax of the penalized logits
    if fields.get("frequency_penalty", 0) >= 2 or fields.get("repetition_penalty", 1) >= 1.8:
        assert out.token_ids != base.token_ids  # strong enough to change the answer of this tiny model


def test_sampled_rows_draw_from_the_penalized_distribution(llm):
    """With top_k=1 a sampled row must pick the penalized argmax, i.e. the penalty applies before top-k."""
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, frequency_penalty=2.0)
    topk1 = SamplingParams(temperature=1.3, top_k=1, seed=5, max_tokens=10, ignore_eos=True, frequency_penalty=2.0)
    a, b = llm.generate([PROMPT, PROMPT], [greedy, topk1])
    assert a.token_ids == b.token_ids


def test_logit_bias_forces_and_forbids_tokens(llm):
    forced = llm.generate([PROMPT], SamplingParams(temperature=1.0, seed=1, max_tokens=6, ignore_eos=True,
                                                   logit_bias={42: 100}))[0]
    assert forced.token_ids == [42] * 6
    free = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    banned = set(free.token_ids)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True,
                                                logit_bias={t: -100 for t in banned}))[0]
    assert not banned & set(out.token_ids)


def test_min_tokens_holds_back_eos_even_when_eos_is_certain(llm):
    eos = llm.tokenizer.eos_token_id
    certain = {eos: 100}
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, logit_bias=certain))[0]
    assert out.token_ids == [eos] and out.finish_reason == "stop"
    out = llm.generate([PROMPT], SamplingParams(temperature=1.0, seed=3, max_tokens=20, logit_bias=certain,
                                                min_tokens=5))[0]
    assert len(out.token_ids) == 6 and eos not in out.token_ids[:5] and out.token_ids[5] == eos
    assert out.finish_reason == "stop"
    # stop_token_ids are held back too
    stop_id = 42
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_id],
                                                logit_bias={stop_id: 100}, min_tokens=3))[0]
    assert out.token_ids[3:] == [stop_id] and stop_id not in out.token_ids[:3]


def test_min_tokens_ignores_stop_strings_before_it(llm):
    full = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0]
    first = llm.tokenizer.decode(full.token_ids[:1])
    assert first.strip()
    cut = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[first]))[0]
    assert cut.finish_reason == "stop" and cut.text == ""
    held = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[first],
                                                 min_tokens=4))[0]
    assert held.token_ids == full.token_ids[: len(held.token_ids)] and len(held.token_ids) > 4
    assert held.text.startswith(llm.tokenizer.decode(full.token_ids[:4]))


def test_choices_take_penalties_and_bias_before_the_label_mask(llm):
    labels = ["positive", "negative", "neutral"]
    firsts = {label: llm.tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in labels}
    for label in labels:
        if list(firsts.values()).count(firsts[label]) > 1:
            continue  # shares its first token with another label: a bias cannot single it out
        out = llm.generate([PROMPT], SamplingParams(temperature=0, choices=labels, logit_bias={firsts[label]: 100},
                                                    repetition_penalty=1.2))[0]
        assert out.text == label
    out = llm.generate([PROMPT], SamplingParams(temperature=0, choices=labels, min_tokens=2))[0]
    assert out.error_code == "invalid_request" and out.error.startswith("min_tokens")


@pytest.mark.parametrize("fields, name", [
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(repetition_penalty=2.1), "repetition_penalty"),
    (dict(logit_bias={1: 101}), "logit_bias"),
    (dict(logit_bias={10**6: 1}), "logit_bias"),
    (dict(logit_bias={"5": 1}), "logit_bias"),
    (dict(logit_bias={i: 1 for i in range(301)}), "logit_bias"),
    (dict(logit_bias=[1, 2]), "logit_bias"),
    (dict(min_tokens=-1), "min_tokens"),
    (dict(min_tokens=9, max_tokens=8), "min_tokens"),
    (dict(reject_over_context="yes"), "reject_over_context"),
])
def test_bad_values_are_rejected_naming_the_parameter(llm, fields, name):
    out = llm.generate(["hi"], SamplingParams(**fields))[0]
    assert out.finish_reason == "error" and out.error_code == "invalid_request" and out.error.startswith(name), out.error


def test_prompt_plus_max_tokens_beyond_the_context(llm):
    prompt = [5] * 200
    capped = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert capped.ok and len(capped.token_ids) == MAX_MODEL_LEN - 200  # the library default: capped
    strict = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True, reject_over_context=True)
    over, fits = llm.generate([prompt, [5] * 156], [strict, strict])
    assert over.finish_reason == "error" and over.error_code == "context_length_exceeded"
    assert "300" in over.error and str(MAX_MODEL_LEN) in over.error
    assert fits.ok and len(fits.token_ids) == 100
    label = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=100, reject_over_context=True,
                                                  choices=["yes", "no"]))[0]
    assert label.ok  # a label stops at the label: exempt
