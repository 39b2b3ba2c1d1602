"""Every tokenizer kind the engine loads gives the grammar engine each token's true bytes (engine/token_bytes.py).

The three kinds (tests/engine/tokenizer_kinds.py): byte-level BPE, SentencePiece with byte fallback, and the GGUF
conversion that mixes both. For each: the table agrees with the tokenizer's own decode, token by token and over
multilingual text, and random walks through grammar masks end in answers that satisfy the constraint and are
exactly what the tokenizer decodes their tokens to.
"""
from __future__ import annotations

import json
import random
import re

import pytest
import torch

from pagebatch.engine.structured import GrammarCompiler, GrammarSpec, allocate_bitmask
from pagebatch.engine.structured_mask import _banned_numpy
from pagebatch.engine.token_bytes import token_bytes
from tests.engine import tokenizer_kinds

TEXTS = ["SELECT col_1 FROM table_2 WHERE col_2 = 1", 'A line\nand "quotes"\tand a tab', "café, naïve, 東京, 😀, ±5 €",
         "  two leading spaces", "def f(x):\n    return x ** 2\n", "<0x41> is not a byte here"]
SQL = ('root ::= select_statement\nselect_statement ::= "SELECT " column " from " table " where " condition\n'
       'column ::= "col_1 " | "col_2 "\ntable ::= "table_1 " | "table_2 "\ncondition ::= column "= " number\n'
       'number ::= "1 " | "2 "')
SQL_ANSWER = re.compile(r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ")
# the cookbook's math-tutor shape: free-text strings, where a raw newline would break the JSON
MATH = {"type": "object", "properties": {"steps": {"type": "array", "items": {"type": "object", "properties": {
    "explanation": {"type": "string", "maxLength": 40}, "output": {"type": "string", "maxLength": 20}},
    "required": ["explanation", "output"], "additionalProperties": False}, "maxItems": 2},
    "final_answer": {"type": "string", "maxLength": 20}}, "required": ["steps", "final_answer"],
    "additionalProperties": False}
CODE = r"[A-Z]{2}-\d{3}\s\w{1,6}"


@pytest.fixture(scope="module", params=tokenizer_kinds.KINDS)
def kind(request, smollm2_dir):
    tokenizer = tokenizer_kinds.make(request.param, smollm2_dir)
    return request.param, tokenizer, token_bytes(tokenizer)


def _strip_first(decoded: str, text: str) -> bool:
    """The tokenizer's decode of a sequence, up to the one leading space a Strip / Metaspace decoder drops."""
    return decoded == text or (text.startswith(" ") and decoded == text[1:])


def test_every_token_agrees_with_the_tokenizers_own_decode(kind):
    name, tokenizer, table = kind
    assert not table.unresolved, f"{name}: {len(table.unresolved)} tokens without known bytes"
    byte_tokens = 0
    for t, piece in enumerate(table.pieces):
        if t in table.special:
            continue
        alone = tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert _strip_first(alone, piece.decode("utf-8", errors="replace")), (name, t, piece, alone)
        byte_tokens += len(piece) == 1 and piece[0] >= 0x80
    assert byte_tokens >= 64, f"{name}: the high bytes should be tokens of their own"


@pytest.mark.parametrize("text", TEXTS)
def test_text_round_trips_through_the_table(kind, text):
    name, tokenizer, table = kind
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    joined = b"".join(table.pieces[t] for t in ids)
    decoded = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert _strip_first(decoded, joined.decode("utf-8")), (name, text, joined, decoded)
    assert joined.decode("utf-8").lstrip(" ") == text.lstrip(" ") or joined.decode("utf-8") == text


def _walk(compiler: GrammarCompiler, spec: GrammarSpec, seed: int, vocab: int, limit: int = 400) -> tuple[list, str]:
    """Sample uniformly among the tokens the mask allows until the grammar ends: the harshest 'model'."""
    state = compiler.new_state(spec)
    bitmask = allocate_bitmask(1, state.words)
    rng = random.Random(seed)
    ids = []
    for _ in range(limit):
        state.fill_mask(bitmask)
        allowed = (~_banned_numpy(bitmask, vocab)[0]).nonzero().flatten().tolist()
        assert allowed, "an empty mask"
        token = rng.choice(allowed)
        assert state.accept(token) and state.error is None, f"the mask allowed a token the grammar refused: {state.error}"
        ids.append(token)
        if state.is_terminated():
            return ids, state.text(ids)
    raise AssertionError(f"no end within {limit} tokens: {state.text(ids)!r}")


@pytest.mark.parametrize("seed", range(4))
def test_random_walks_through_grammar_masks_satisfy_their_constraint(kind, seed):
    import jsonschema

    name, tokenizer, table = kind
    vocab = len(tokenizer) + 7  # a model vocabulary padded past the tokenizer's: those ids are never allowed
    compiler = GrammarCompiler(tokenizer, vocab, {tokenizer.eos_token_id})
    for spec, check in [
        (GrammarSpec("grammar", SQL), lambda text: SQL_ANSWER.fullmatch(text)),
        (GrammarSpec("json_schema", json.dumps(MATH)), lambda text: jsonschema.validate(json.loads(text), MATH) or True),
        (GrammarSpec("regex", CODE), lambda text: re.fullmatch(CODE, text, re.ASCII)),
    ]:
        ids, text = _walk(compiler, spec, seed, vocab)
        assert all(t < len(tokenizer) for t in ids)
        assert check(text), (name, spec.kind, text)
        body = [t for t in ids if t not in table.special]
        decoded = tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert _strip_first(decoded, text), (name, text, decoded)


def test_the_mixed_conversion_reads_byte_level_pieces_as_their_bytes(smollm2_dir):
    """The case that broke: ``Ġcol`` is the bytes `` col``, not ``c4 a0 63 6f 6c``."""
    mixed = tokenizer_kinds.gguf_mixed(smollm2_dir)
    table = token_bytes(mixed)
    assert table.pieces[mixed.convert_tokens_to_ids("Ġcol")] == b" col"
    assert table.pieces[mixed.convert_tokens_to_ids("Ċ")] == b"\n"
    compiler = GrammarCompiler(mixed, len(mixed), {mixed.eos_token_id})
    state = compiler.new_state(GrammarSpec("regex", r"SELECT col FROM t"))
    for t in mixed("SELECT col FROM t", add_special_tokens=False)["input_ids"]:
        assert state.accept(t), state.error
    assert state.accept(mixed.eos_token_id) and state.is_terminated() and state.error is None
    bitmask = allocate_bitmask(1, compiler.new_state(GrammarSpec("regex", "a")).words)
    torch_vocab = len(mixed)
    newline = compiler.new_state(GrammarSpec("json_schema", json.dumps({"type": "string"})))
    assert newline.accept(mixed.convert_tokens_to_ids('"'))
    newline.fill_mask(bitmask)
    allowed = set((~_banned_numpy(bitmask, torch_vocab)[0]).nonzero().flatten().tolist())
    assert mixed.convert_tokens_to_ids("Ċ") not in allowed  # a raw newline never enters a JSON string
