"""One regex dialect for bare regexes and JSON-schema patterns (engine/regex_dialect.py): ASCII ``\\d``, ``\\w``,
``\\s``, complements that no reading disputes, Unicode one ``\\p{..}`` away. Random walks through SmolLM2's masks
(any allowed token, uniformly: non-ASCII digits and letters are many tokens of its vocabulary) must answer what
Python's ``re`` matches with and without ``re.ASCII``, and what ``jsonschema`` validates."""
from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from transformers import AutoTokenizer

from pagebatch.engine.regex_dialect import ascii_classes, schema_with_ascii_patterns
from pagebatch.engine.structured import GrammarCompiler, GrammarSpec, allocate_bitmask
from pagebatch.engine.structured_mask import _banned_numpy


def test_shorthand_classes_become_ascii_inside_and_outside_brackets():
    assert ascii_classes(r"\d{4}") == "[0-9]{4}"
    assert ascii_classes(r"[\w.-]+") == "[0-9A-Za-z_.-]+"
    assert ascii_classes(r"[^\d]") == r"[^\p{Nd}]"  # a complement leaves out every reading's digits
    assert ascii_classes(r"[[:alpha:]\s]") == r"[[:alpha:] \t\n\r\f\v]"
    assert ascii_classes(r"\p{L}+") == r"\p{L}+" and ascii_classes(r"\\d") == r"\\d"  # Unicode asked for; an escape


def test_patterns_are_rewritten_where_they_are_keywords_only():
    schema = {"type": "object", "properties": {
        "pattern": {"type": "string", "pattern": r"^\d+$"},  # a property named "pattern"
        "tags": {"type": "array", "items": {"type": "string", "pattern": r"\w"}}},
        "patternProperties": {r"^\d": {"type": "string"}},
        "$defs": {"x": {"anyOf": [{"pattern": r"\s"}]}}}
    out = schema_with_ascii_patterns(schema)
    assert set(out["properties"]) == {"pattern", "tags"}
    assert out["properties"]["pattern"]["pattern"] == "^[0-9]+$"
    assert out["properties"]["tags"]["items"]["pattern"] == "[0-9A-Za-z_]"
    assert list(out["patternProperties"]) == ["^[0-9]"]
    assert out["$defs"]["x"]["anyOf"][0]["pattern"] == r"[ \t\n\r\f\v]"
    assert schema["properties"]["pattern"]["pattern"] == r"^\d+$"  # the request's own schema is left alone


@pytest.fixture(scope="module")
def compiler(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    return GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})


def _walk(compiler, spec, seed, limit=80) -> str:
    state = compiler.new_state(spec)
    bitmask = allocate_bitmask(1, state.words)
    rng, ids = random.Random(seed), []
    for _ in range(limit):
        state.fill_mask(bitmask)
        allowed = (~_banned_numpy(bitmask, compiler.vocab_size)[0]).nonzero().flatten().tolist()
        token = rng.choice(allowed)
        assert state.accept(token) and state.error is None
        ids.append(token)
        if state.is_terminated():
            return state.text(ids)
    raise AssertionError(f"no end: {state.text(ids)!r}")


REGEXES = [r"\d{4}", r"\w{3}-\d{2}", r"[\d\s]{5}", r"\S{2}\W\D", r"[^\w\s]{2}",
           r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}\d{1,3}"]


@pytest.mark.parametrize("pattern", REGEXES)
def test_bare_regexes_and_schema_patterns_answer_in_the_same_dialect(compiler, pattern):
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": f"^{pattern}$"}},
              "required": ["v"], "additionalProperties": False}
    for seed in range(6):
        text = _walk(compiler, GrammarSpec("regex", pattern, "guided_regex"), seed)
        assert re.fullmatch(pattern, text, re.ASCII) and re.fullmatch(pattern, text), text
        document = json.loads(_walk(compiler, GrammarSpec("json_schema", json.dumps(schema)), seed))
        jsonschema.validate(document, schema)
        assert re.fullmatch(pattern, document["v"], re.ASCII), document


def test_unicode_classes_stay_available(compiler):
    texts = {_walk(compiler, GrammarSpec("regex", r"\p{Nd}{3}"), seed) for seed in range(10)}
    assert all(re.fullmatch(r"\d{3}", t) for t in texts)  # Python's Unicode \d
    assert any(not t.isascii() for t in texts)  # and non-ASCII digits among them: \p{Nd} is what was asked
