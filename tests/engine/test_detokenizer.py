import random

import pytest
from transformers import AutoTokenizer

from pagebatch.engine.detokenizer import IncrementalDetokenizer

TEXTS = ["hello café naïve", "東京 数据 模型 😀🚀", "price: 12 € ± 3 ¥ ✓✓", "über résumé!! 北京"]


@pytest.fixture(scope="module")
def tokenizer(checkpoint_dir):
    return AutoTokenizer.from_pretrained(checkpoint_dir("llama"))


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode_and_never_splits_characters(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, [1], stop=[])
    seen = []
    for token in ids:
        detok.add(token)
        seen.append(detok.text)
        assert "\ufffd" not in detok.text
    assert detok.text == tokenizer.decode(ids) == text
    assert all(a == b[: len(a)] for a, b in zip(seen, seen[1:])), "text must only grow"


def test_multibyte_character_split_across_byte_tokens(tokenizer):
    # Byte-level tokens for an emoji the BPE never merged: the character appears only once complete.
    ids = tokenizer("𝄞", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer, [1], stop=[])
    for token in ids[:-1]:
        detok.add(token)
        assert detok.text == ""
    detok.add(ids[-1])
    assert detok.text == "𝄞"


@pytest.mark.parametrize("seed", range(5))
def test_stop_string_spanning_tokens_is_cut(tokenizer, seed):
    rng = random.Random(seed)
    text = " ".join(rng.choice(TEXTS) for _ in range(4))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = rng.randrange(3, len(text) - 6)
    stop = text[start : start + rng.randint(2, 5)]
    detok = IncrementalDetokenizer(tokenizer, [1], stop=["never-there", stop])
    hit = None
    for token in ids:
        hit = detok.add(token)
        if hit:
            break
    assert hit == stop
    assert detok.text == text[: text.index(stop)]
