"""The three ways the engine's tokenizers spell token bytes, built for tests.

- byte-level BPE: SmolLM2's tokenizer as this transformers converts its GGUF (GPT-2 style, ``Ġ`` for a space);
- SentencePiece with byte fallback: a small BPE trained here the way Llama 2 / Mistral tokenizers are laid out
  (``▁`` for a space, ``<0x00>``..``<0xFF>`` for bytes no merge covers, a Strip decoder);
- a converted GGUF that mixes both: SmolLM2's vocabulary and merges in the layout transformers 4.x's GGUF
  converter gave it (a byte-fallback BPE whose decoder is ByteFallback, Fuse, Replace, ByteLevel, Strip), which
  is what users of transformers 4.57 got.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

CORPUS = [
    "The batch arrived late, and the review said: great price, slow delivery.",
    "SELECT name, age FROM people WHERE age > 30 ORDER BY name;",
    '{"name": "Ann", "age": 31, "tags": ["a", "b"]}',
    "def add(a, b):\n    return a + b\n",
    "café naïve résumé über 42 17 2024-05-01 12:30",
] * 40


def byte_level(smollm2_dir: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(smollm2_dir))


def gguf_mixed(smollm2_dir: Path) -> PreTrainedTokenizerFast:
    data = json.loads((Path(smollm2_dir) / "tokenizer.json").read_text())
    data["model"]["byte_fallback"] = True
    data["normalizer"] = {"type": "Sequence", "normalizers": []}
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>")


def sentencepiece_byte_fallback(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A Llama-2-layout tokenizer: specials first, then the 256 byte tokens, then the trained pieces."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], show_progress=False)
    trainer_tok.train_from_iterator(CORPUS, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if p not in specials]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return hf


KINDS = ("byte_level", "sentencepiece_byte_fallback", "gguf_mixed")


def make(kind: str, smollm2_dir: Path) -> PreTrainedTokenizerFast:
    if kind == "byte_level":
        return byte_level(smollm2_dir)
    if kind == "gguf_mixed":
        return gguf_mixed(smollm2_dir)
    return sentencepiece_byte_fallback()
