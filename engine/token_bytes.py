"""Each token's true bytes, read from the tokenizer's own decoder: what the grammar engine matches and what a
constrained answer's text is made of.

Tokenizers spell their tokens three ways: byte-level BPE (GPT-2, Llama 3, Qwen: ``Ġcol`` is `` col``, one
printable character per byte), SentencePiece with byte fallback (Llama 2, Mistral: ``▁col`` is `` col`` and
``<0xE2>`` is one byte), and conversions that mix both (transformers 4.x turned SmolLM2's GGUF into a
byte-fallback BPE whose decoder ends with a byte-level step). Reading the vocabulary's strings with the wrong
rule makes the grammar engine allow a token for bytes it does not produce (``Ġcol`` read as ``c4 a0 63 6f 6c``).
So nothing here guesses the kind from the tokenizer's configuration: every token is decoded by the tokenizer
itself, after an anchor token so that decoders which drop a leading space on the first token (``Strip``,
``Metaspace``) keep it, and the text it adds is its bytes. Only a token that is a piece of a UTF-8 character
decodes to U+FFFD; its bytes are the one reading (``<0xNN>``, the byte-level alphabet, or the piece's own UTF-8)
whose decoding is exactly what the decoder gave. A token no reading explains is left out of every grammar.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

REPLACEMENT = "\ufffd"
_ANCHORS = ("a", "x", "e", "the", "0", ".")


@dataclass(frozen=True)
class TokenBytes:
    """``pieces[t]``: token t's bytes; special tokens (``special``) and unresolved ones have none in text."""

    pieces: tuple[bytes, ...]
    special: frozenset[int]
    unresolved: frozenset[int]  # non-special tokens whose bytes could not be determined: never allowed by a grammar

    def __len__(self) -> int:
        return len(self.pieces)

    def text(self, token_ids: list[int]) -> str:
        """The text of generated tokens: their bytes joined (special tokens add nothing), decoded once."""
        pieces, hidden = self.pieces, self.special | self.unresolved
        data = b"".join(pieces[t] for t in token_ids if 0 <= t < len(pieces) and t not in hidden)
        return data.decode("utf-8", errors="replace")


def token_bytes(tokenizer) -> TokenBytes:
    """The bytes of every token of a fast (Rust ``tokenizers``) Hugging Face tokenizer, by its own decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("structured outputs need a fast tokenizer (one with a tokenizers backend)")
    size = max(backend.get_vocab_size(with_added_tokens=True), len(tokenizer))
    special = {i for i, added in backend.get_added_tokens_decoder().items() if added.special}
    special |= {i for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    anchor, anchor_text = _anchor(backend, special)
    if backend.decode([anchor, anchor], skip_special_tokens=False) == anchor_text * 2:
        decoded = backend.decode_batch([[anchor, t] for t in range(size)], skip_special_tokens=False)
    else:  # a tokenizer without a decoder joins tokens with a space: each token alone is its text
        anchor_text = ""
        decoded = backend.decode_batch([[t] for t in range(size)], skip_special_tokens=False)
    pieces: list[bytes] = []
    unresolved: set[int] = set()
    for t, text in enumerate(decoded):
        piece = backend.id_to_token(t)
        if t in special or piece is None:
            pieces.append((piece or "").encode("utf-8"))
            continue
        found = _bytes_of(piece, text[len(anchor_text):] if text.startswith(anchor_text) else None)
        if found is None:
            unresolved.add(t)
            found = b""
        pieces.append(found)
    return TokenBytes(tuple(pieces), frozenset(special), frozenset(unresolved))


def _anchor(backend, special: set[int]) -> tuple[int, str]:
    """A token that decodes to itself, a plain ASCII word without spaces."""
    for word in _ANCHORS:
        for piece in (word, "▁" + word, "Ġ" + word):
            t = backend.token_to_id(piece)
            if t is None or t in special:
                continue
            text = backend.decode([t], skip_special_tokens=False)
            if text.strip() == word and text == text.lstrip() and text.isascii():
                return t, text
    raise ValueError("structured outputs: the tokenizer has no plain ASCII token to decode against")


def _bytes_of(piece: str, decoded: str | None) -> bytes | None:
    """The token's bytes, given what the tokenizer decodes it to after the anchor (None: not a clean suffix)."""
    if decoded is None:
        return None
    if REPLACEMENT not in decoded:
        return decoded.encode("utf-8")
    for candidate in _readings(piece):
        if candidate.decode("utf-8", errors="replace") == decoded:
            return candidate
    return None


def _readings(piece: str) -> list[bytes]:
    """The ways tokenizers spell a token's bytes, most specific first."""
    out = []
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            out.append(bytes([int(piece[3:5], 16)]))
        except ValueError:
            pass
    table = _byte_level_alphabet()
    if piece and all(c in table for c in piece):
        out.append(bytes(table[c] for c in piece))
    out.append(piece.replace("▁", " ").encode("utf-8"))
    return out


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the other 68 are
    shifted to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


__all__ = ["TokenBytes", "token_bytes"]
