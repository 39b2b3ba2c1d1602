"""Structured outputs (engine/structured.py): every answer that ends parses and validates.

The decode loop here is transformers' forward on the same checkpoint (with its KV cache), masked by
``apply_masks`` and advanced by ``GrammarState.accept`` as the engine's sampler and stopping logic will be:
the random tiny model and SmolLM2, greedy and sampled, 8 requests at once.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from pagebatch.engine.structured import (
    MAX_SPEC_CHARS,
    GrammarCompiler,
    GrammarSpec,
    allocate_bitmask,
    apply_bitmask,
    apply_masks,
    check,
    fill_masks,
)
from pagebatch.engine.structured_mask import _banned_numpy, _banned_torch

# bounded strings, integers and arrays: every path through it ends within a few dozen tokens, even for a
# random model that picks uniformly among the allowed tokens
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "sentiment", "active", "address"],
    "additionalProperties": False,
}
SCHEMA_SPEC = GrammarSpec("json_schema", json.dumps(SCHEMA), "response_format")
REGEX = r"[A-Z]{2}-[0-9]{3}-(alpha|beta)"
CHOICES = ["yes", "no", "not sure"]


def _validate(document, schema=SCHEMA) -> None:
    import jsonschema
    jsonschema.validate(document, schema)


# -- a small decode loop over transformers -------------------------------------------------------------------


class Decoder:
    def __init__(self, path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.vocab_size = self.model.config.vocab_size
        eos = self.model.config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos)

    def prompt(self, text: str) -> list[int]:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=False)
        return self.tokenizer(text)["input_ids"]

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], specs: list[GrammarSpec | None], max_new: int, *,
            temperature: float = 0.0, seed: int = 0) -> list[tuple[str, str]]:
        """(text, finish reason) per prompt; a row ends when its grammar is terminated, at EOS or at max_new."""
        states = [None if s is None else self.compiler.new_state(s) for s in specs]
        n, longest = len(prompts), max(map(len, prompts))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((n, longest), pad)
        attention = torch.zeros((n, longest), dtype=torch.int64)
        for i, p in enumerate(prompts):  # left padding
            ids[i, longest - len(p):] = torch.tensor(p)
            attention[i, longest - len(p):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
        generator = torch.Generator().manual_seed(seed)
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * n
        for _ in range(max_new):
            logits = out.logits[:, -1, :].float()
            logits = apply_masks(logits, [s if finish[i] is None else None for i, s in enumerate(states)])
            if temperature == 0:
                tokens = logits.argmax(-1)
            else:
                tokens = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            for i, token in enumerate(tokens.tolist()):
                if finish[i] is not None:
                    continue
                state = states[i]
                if state is not None:
                    assert state.accept(token), f"the grammar refused a token its own mask allowed: {state.error}"
                if token in self.eos:
                    finish[i] = "stop"
                    continue
                outputs[i].append(token)
                if state is not None and state.is_terminated():
                    finish[i] = "stop"
            if all(f is not None for f in finish):
                break
            attention = torch.cat([attention, torch.ones((n, 1), dtype=torch.int64)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=tokens[:, None], attention_mask=attention, position_ids=positions,
                             past_key_values=out.past_key_values, use_cache=True)
        return [(self.tokenizer.decode(o, skip_special_tokens=True), f or "length") for o, f in zip(outputs, finish)]


@pytest.fixture(scope="module")
def tiny(checkpoint_dir):
    return Decoder(checkpoint_dir("llama"))


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return Decoder(smollm2_dir)


PEOPLE = ["Ann, 31, lives in Paris and loves the new phone", "Bo, 45, from Lima, hated the delivery",
          "Carla (22, Oslo) thinks the price is fine", "Dmitri is 67, Quito, very happy with support",
          "Eve, 19, Pune: the app keeps crashing", "Farid, 50, Osaka, neutral about the update",
          "Gao, 38, lives in Austin, likes it", "Hana, 27, Lagos, no opinion"]


def _extraction_prompts(decoder: Decoder) -> list[list[int]]:
    return [decoder.prompt("Extract name, age, sentiment, active, tags and address.city as JSON: " + p)
            for p in PEOPLE]


def _assert_all_valid(results, schema=SCHEMA) -> None:
    for text, reason in results:
        assert reason == "stop", f"did not finish: {text!r}"
        _validate(json.loads(text), schema)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_model_json_schema_always_validates(tiny, one_thread, temperature):
    results = tiny.run(_extraction_prompts(tiny), [SCHEMA_SPEC] * 8, 128, temperature=temperature, seed=1)
    _assert_all_valid(results)
    assert len({text for text, _ in results}) > 1


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_smollm2_json_schema_always_validates(smol, one_thread, temperature):
    results = smol.run(_extraction_prompts(smol), [SCHEMA_SPEC] * 8, 64, temperature=temperature, seed=2)
    _assert_all_valid(results)
    if temperature == 0:  # a real model reads the prompt: the greedy answers carry its facts
        names = [json.loads(text)["name"] for text, _ in results]
        assert sum(name.startswith(p.split()[0].strip(",")) for name, p in zip(names, PEOPLE)) >= 6, names


def test_smollm2_json_object_and_unconstrained_rows_share_a_batch(smol, one_thread):
    """json_object rows end as one JSON object; the rows without a grammar in the same batch are untouched
    (their greedy text equals a run without any grammar in the batch)."""
    prompts = _extraction_prompts(smol)[:4]
    specs = [GrammarSpec("json_object"), None, GrammarSpec("json_object"), None]
    mixed = smol.run(prompts, specs, 48)
    plain = smol.run(prompts, [None] * 4, 48)
    for i in (0, 2):
        if mixed[i][1] == "stop":
            assert isinstance(json.loads(mixed[i][0]), dict)
        else:  # cut by max_new: still the start of one compact JSON object
            assert mixed[i][0].startswith("{")
    assert [mixed[1], mixed[3]] == [plain[1], plain[3]]


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_regex_and_choice(which, request, one_thread):
    decoder = request.getfixturevalue(which)
    prompts = _extraction_prompts(decoder)
    specs = [GrammarSpec("regex", REGEX)] * 4 + [GrammarSpec("choice", json.dumps(CHOICES))] * 4
    for temperature in (0.0, 1.0):
        results = decoder.run(prompts, specs, 32, temperature=temperature, seed=3)
        for text, reason in results[:4]:
            assert reason == "stop" and re.fullmatch(REGEX, text), text
        for text, reason in results[4:]:
            assert reason == "stop" and text in CHOICES, text


def test_grammar_gbnf_and_lark(tiny, one_thread):
    prompts = _extraction_prompts(tiny)[:4]
    gbnf = GrammarSpec("grammar", 'root ::= "id:" [0-9] [0-9]? " " ("ok" | "fail")', "guided_grammar")
    lark = GrammarSpec("grammar", 'start: "id:" /[0-9]{1,2}/ " " ("ok" | "fail")', "structured_outputs")
    results = tiny.run(prompts, [gbnf, lark, gbnf, lark], 16, temperature=1.0, seed=4)
    for text, reason in results:
        assert reason == "stop" and re.fullmatch(r"id:[0-9]{1,2} (ok|fail)", text), text


# -- the API ------------------------------------------------------------------------------------------------


def test_compiled_once_per_schema(tiny):
    compiler = GrammarCompiler(tiny.tokenizer, tiny.vocab_size, tiny.eos)
    first = compiler.compile(SCHEMA_SPEC)
    # the same schema from another parameter (and a fresh but equal spec object) is the same compiled grammar
    again = compiler.compile(GrammarSpec("json_schema", json.dumps(SCHEMA), "guided_json"))
    states = [compiler.new_state(SCHEMA_SPEC) for _ in range(100)]
    assert again is first and len({id(s) for s in states}) == 100
    assert compiler.cache_info() == {"hits": 101, "misses": 1, "size": 1}
    compiler.compile(GrammarSpec("json_object"))
    compiler.compile(GrammarSpec("json_object", "ignored text", "response_format"))
    assert compiler.cache_info()["misses"] == 2
    for _ in range(3):  # an invalid spec is compiled (and refused) once, then refused from the cache
        with pytest.raises(ValueError, match=r"^response_format: invalid JSON schema"):
            compiler.compile(GrammarSpec("json_schema", '{"type": "strin"}', "response_format"))
    assert compiler.cache_info()["misses"] == 3


def test_cache_is_bounded(tiny):
    compiler = GrammarCompiler(tiny.tokenizer, tiny.vocab_size, tiny.eos, max_cached=4)
    for i in range(10):
        compiler.compile(GrammarSpec("regex", f"a{{{i + 1}}}"))
    assert compiler.cache_info()["size"] == 4
    compiler.compile(GrammarSpec("regex", "a{10}"))
    assert compiler.cache_info()["hits"] == 1


@pytest.mark.parametrize("spec, message", [
    (GrammarSpec("json_schema", '{"type": "strin"}', "response_format"), r"^response_format: invalid JSON schema: .*strin"),
    (GrammarSpec("json_schema", '{"type": "array", "uniqueItems": true}', "response_format"),
     r"^response_format: invalid JSON schema: .*uniqueItems"),  # not enforceable: refused, never ignored
    (GrammarSpec("json_schema", '{"not": {"type": "string"}}', "guided_json"), r"^guided_json: .*not"),
    (GrammarSpec("json_schema", '{"type": "integer", "minimum": 5, "maximum": 2}', "response_format"),
     r"^response_format: invalid JSON schema"),
    (GrammarSpec("json_schema", '{"$ref": "#/$defs/missing"}', "response_format"), r"^response_format: invalid"),
    (GrammarSpec("json_schema", "{not json", "response_format"), r"^response_format: the JSON schema is not valid JSON"),
    (GrammarSpec("json_schema", "[1]", "response_format"), r"^response_format: the JSON schema must be an object"),
    (GrammarSpec("json_schema", '{"items":' * 40 + "{}" + "}" * 40, "response_format"), r"^response_format: .*nested"),
    (GrammarSpec("json_schema", "x" * (MAX_SPEC_CHARS + 1), "response_format"), r"^response_format: .*characters long"),
    (GrammarSpec("regex", "(a", "guided_regex"), r"^guided_regex: invalid regex"),
    (GrammarSpec("regex", "", "guided_regex"), r"^guided_regex: the regex must not be empty"),
    (GrammarSpec("grammar", "start: undefined_rule", "guided_grammar"), r"^guided_grammar: invalid grammar"),
    (GrammarSpec("choice", "[]", "guided_choice"), r"^guided_choice: the choices must be"),
    (GrammarSpec("xml", "", "structured_outputs"), r"^structured_outputs: the constraint kind must be one of"),
])
def test_invalid_specs_name_the_parameter(tiny, spec, message):
    with pytest.raises(ValueError, match=message):
        check(spec)  # without a tokenizer: what the jobs layer runs at validation
    with pytest.raises(ValueError, match=message):
        tiny.compiler.compile(spec)


def test_a_state_ends_when_only_eos_can_follow(tiny):
    tok = tiny.tokenizer
    state = tiny.compiler.new_state(GrammarSpec("json_schema", '{"type": "object", "properties": {"a": {"type": '
                                                '"integer"}}, "required": ["a"], "additionalProperties": false}'))
    ids = tok('{"a":12}', add_special_tokens=False)["input_ids"]
    for t in ids[:-1]:
        assert state.accept(t) and not state.is_terminated()
    assert state.allows_eos() is False
    assert state.accept(ids[-1]) and state.is_terminated() and state.error is None
    bitmask = allocate_bitmask(1, state.words)
    state.fill_mask(bitmask, 0)
    allowed = (~_banned_numpy(bitmask, tiny.vocab_size)[0]).nonzero().flatten().tolist()
    assert set(allowed) == tiny.eos  # a finished grammar allows EOS only
    # a regex that may go on: complete (EOS allowed) but not terminated
    digits = tiny.compiler.new_state(GrammarSpec("regex", "[0-9]+"))
    assert digits.accept(tok("7", add_special_tokens=False)["input_ids"][0])
    assert digits.allows_eos() and not digits.is_terminated()
    assert digits.accept(min(tiny.eos)) and digits.is_terminated()


def test_a_refused_token_leaves_the_state_in_error_allowing_eos_only(tiny):
    state = tiny.compiler.new_state(GrammarSpec("choice", json.dumps(CHOICES)))
    letter_z = tiny.tokenizer("z", add_special_tokens=False)["input_ids"][0]
    assert not state.accept(letter_z)
    assert state.error and state.is_terminated()
    bitmask = allocate_bitmask(1, state.words)
    state.fill_mask(bitmask)
    assert set((~_banned_numpy(bitmask, tiny.vocab_size)[0]).nonzero().flatten().tolist()) <= tiny.eos


def test_apply_masks_touches_only_rows_with_a_grammar(tiny):
    compiler = tiny.compiler
    states = [compiler.new_state(SCHEMA_SPEC), None, compiler.new_state(GrammarSpec("regex", REGEX)), None,
              compiler.new_state(GrammarSpec("json_object"))]
    logits = torch.randn(5, tiny.vocab_size)
    with torch.inference_mode():  # the engine's logits are inference tensors: masking must not write into them
        logits = logits.clone()
    masked = apply_masks(logits, states)
    assert masked is not logits
    assert torch.equal(masked[1], logits[1]) and torch.equal(masked[3], logits[3])
    for row in (0, 2, 4):
        one = allocate_bitmask(1, states[row].words)
        states[row].fill_mask(one)
        expected = logits[row].masked_fill(_banned_numpy(one, tiny.vocab_size)[0], float("-inf"))
        assert torch.equal(masked[row], expected)
        assert torch.isfinite(masked[row]).sum() >= 1
    assert apply_masks(masked, [None] * 5) is masked  # nothing to do: nothing happens
    owned = logits.clone()
    assert apply_masks(owned, states, inplace=True) is owned and torch.equal(owned, masked)
    everyone = [compiler.new_state(GrammarSpec("regex", REGEX)) for _ in range(5)]
    all_masked = apply_masks(logits, everyone)  # every row: the one-pass path
    first = allocate_bitmask(1, everyone[0].words)
    everyone[0].fill_mask(first)
    assert torch.equal(all_masked[3], logits[3].masked_fill(_banned_numpy(first, tiny.vocab_size)[0], float("-inf")))


def test_bitmask_unpacking_paths_agree():
    """The numpy unpacking (CPU) and the shift unpacking (any device) give the same mask, padding included."""
    g = torch.Generator().manual_seed(0)
    for vocab in (1, 31, 32, 33, 512, 1000):
        words = (vocab + 31) // 32
        bitmask = torch.randint(-(2**31), 2**31 - 1, (7, words), dtype=torch.int32, generator=g)
        assert torch.equal(_banned_numpy(bitmask, vocab), _banned_torch(bitmask, vocab))
        logits = torch.randn(9, words * 32 + 3)  # logits wider than the bitmask: the extra columns are left alone
        rows = torch.tensor([8, 0, 3, 4, 5, 6, 1])
        out = logits.clone()
        apply_bitmask(out, bitmask, rows)
        for i, r in enumerate(rows.tolist()):
            bit = lambda t: (int(bitmask[i, t // 32]) >> (t % 32)) & 1  # noqa: E731
            expected = [v if t >= words * 32 or bit(t) else float("-inf") for t, v in enumerate(logits[r].tolist())]
            assert out[r].tolist() == expected
        assert torch.equal(out[[2, 7]], logits[[2, 7]])


def test_fill_masks_is_the_per_row_fill(tiny):
    compiler = tiny.compiler
    tok = tiny.tokenizer
    prefixes = ['{"name":"A', '{"name":"Bo","age":4', '{"name":"Bo","age":45,"sentiment":"ne', "", '{"name":"']
    states = []
    for p in prefixes:
        s = compiler.new_state(SCHEMA_SPEC)
        for t in tok(p, add_special_tokens=False)["input_ids"]:
            assert s.accept(t), p
        states.append(s)
    batched = allocate_bitmask(len(states), states[0].words)
    fill_masks(states, batched)
    for i, s in enumerate(states):
        one = allocate_bitmask(1, s.words)
        s.fill_mask(one)
        assert torch.equal(batched[i], one[0])


def test_spec_survives_asdict_and_json():
    from dataclasses import asdict

    stored = json.loads(json.dumps(asdict(SCHEMA_SPEC)))
    assert GrammarSpec.coerce(stored) == SCHEMA_SPEC and GrammarSpec.coerce(None) is None
    assert GrammarSpec("choice", json.dumps(CHOICES)).choices == CHOICES and SCHEMA_SPEC.choices is None


# -- through the engine (engine.LLM), once SamplingParams carries ``structured`` -------------------------------

@pytest.fixture(scope="module")
def tiny_llm(checkpoint_dir):
    from pagebatch.engine.llm import LLM

    return LLM(checkpoint_dir("llama"), dtype="float32", device="cpu")


def test_engine_answers_validate_and_compile_once(tiny_llm, one_thread):
    from pagebatch.engine.sampling_params import SamplingParams

    prompts = [[{"role": "user", "content": p}] for p in PEOPLE]
    greedy = tiny_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=128, structured=SCHEMA_SPEC))
    sampled = tiny_llm.generate(prompts, [SamplingParams(temperature=1.0, seed=i, max_tokens=128, structured=SCHEMA_SPEC)
                                          for i in range(8)])
    for out in greedy + sampled:
        assert out.finish_reason == "stop", out.text
        _validate(json.loads(out.text))
    assert len({o.text for o in sampled}) > 1
    info = tiny_llm.engine.builder.grammars.cache_info()
    assert info["misses"] == 1 and info["hits"] >= 15


def test_engine_mixes_grammar_label_and_free_rows(tiny_llm, one_thread):
    from pagebatch.engine.sampling_params import SamplingParams

    prompts = [[{"role": "user", "content": p}] for p in PEOPLE[:4]]
    params = [SamplingParams(temperature=0, max_tokens=32, structured=GrammarSpec("regex", REGEX)),
              SamplingParams(temperature=0, max_tokens=12),
              SamplingParams(temperature=0, choices=CHOICES),
              SamplingParams(temperature=0, max_tokens=64, structured=GrammarSpec("json_object"), logprobs=2)]
    outs = tiny_llm.generate(prompts, params)
    alone = tiny_llm.generate(prompts[1:2], params[1])[0]
    assert outs[0].finish_reason == "stop" and re.fullmatch(REGEX, outs[0].text)
    assert outs[1].token_ids == alone.token_ids  # the row without a grammar is not touched
    assert outs[2].text in CHOICES
    assert outs[3].text.startswith("{") and len(outs[3].logprobs) == len(outs[3].token_ids)
    if outs[3].finish_reason == "stop":
        assert isinstance(json.loads(outs[3].text), dict)


def test_engine_refuses_a_bad_spec_alone(tiny_llm):
    from pagebatch.engine.sampling_params import SamplingParams

    bad = SamplingParams(max_tokens=8, structured=GrammarSpec("json_schema", '{"type": "strin"}', "response_format"))
    outs = tiny_llm.generate([[{"role": "user", "content": "x"}]] * 2, [bad, SamplingParams(max_tokens=4)])
    assert outs[0].finish_reason == "error" and outs[0].error.startswith("response_format: invalid JSON schema")
    assert outs[1].finish_reason == "length"


def test_engine_smollm2_extraction(smollm2_dir, one_thread):
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.sampling_params import SamplingParams

    llm = LLM(str(smollm2_dir), dtype="float32", device="cpu")
    prompts = [[{"role": "user", "content": "Extract name, age, sentiment, active, tags and address.city as JSON: " + p}]
               for p in PEOPLE]
    for params in (SamplingParams(temperature=0, max_tokens=64, structured=SCHEMA_SPEC),
                   [SamplingParams(temperature=0.8, seed=i, max_tokens=64, structured=SCHEMA_SPEC) for i in range(8)]):
        for out in llm.generate(prompts, params):
            assert out.finish_reason == "stop", out.text
            _validate(json.loads(out.text))
