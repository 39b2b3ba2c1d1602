"""Structured outputs: decoding constrained by a JSON schema, any JSON object, a regex, a label set or a grammar.

The grammar engine is llguidance (``pip install 'pagebatch[structured]'``; imported only when a request has a
grammar): its per-step mask and compile costs match xgrammar's, and it refuses the JSON-schema keywords it
cannot enforce (``not``, ``uniqueItems``, ``if``/``then``, ...) instead of ignoring them, so an answer that ends
always validates (pagebatch.jobs.bench.structured has the numbers).

- :class:`GrammarSpec` says what to constrain to: a frozen dataclass of strings, so SamplingParams can carry it
  and shards can store it (``dataclasses.asdict``; :meth:`GrammarSpec.coerce` rebuilds it from that dict).
- :class:`GrammarCompiler` (one per engine) turns a spec into a :class:`CompiledGrammar`, cached by (kind, spec
  text) in an LRU: a labeling batch repeats one schema on every line and compiles it once. Errors are cached too.
- :class:`GrammarState` is one request's matcher: :meth:`~GrammarState.fill_mask`, :meth:`~GrammarState.accept`,
  :meth:`~GrammarState.is_terminated`, :attr:`~GrammarState.error`. No rollback: the engine never un-generates a
  token (a preempted request keeps its tokens and is recomputed). An answer whose grammar refused a token or has
  nothing left to allow ends as an error (engine/stopping.py), never as "stop".
- The grammar engine sees each token's true bytes (engine/token_bytes.py, read through the tokenizer's own decoder,
  whatever the tokenizer's kind), not its own reading of tokenizer.json, and a constrained answer's text is those
  bytes: exactly what the grammar matched.
- :func:`apply_masks` masks the rows that have a grammar (out of place, like the rest of the sampler): one
  batched fill on llguidance's thread pool and one batched tensor op; the other rows are not touched.
  :func:`apply_bitmask` (engine/structured_mask.py, with the bitmask's fill) is the in-place op under it.

Regexes and schema patterns are read in one dialect (engine/regex_dialect.py). JSON is generated compact
(``{"a":1,"b":[2]}``: no whitespace between tokens), which keeps a small model from looping on whitespace and
costs fewer tokens. An answer ends when its grammar can take nothing but EOS (``is_terminated``); one that runs
out of max_tokens first is cut, as any answer is.

Every error is a ValueError whose message starts with the request parameter the spec came from
(``response_format: ...``), so one bad line fails alone with a clear error.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable

import torch

from pagebatch.engine.structured_mask import _banned, _row_pointer, allocate_bitmask, apply_bitmask, fill_masks
from pagebatch.engine.structured_spec import (
    _INSTALL,
    _NAMES,
    KINDS,
    MAX_CACHED_GRAMMARS,
    MAX_SCHEMA_DEPTH,
    MAX_SPEC_CHARS,
    GrammarSpec,
    _llguidance,
    _short,
    check,
    check_depth,
    grammar_text,
)
from pagebatch.engine.token_bytes import TokenBytes, token_bytes

class CompiledGrammar:
    """A grammar ready for one tokenizer: a matcher in its start state, copied for each request (copying is
    a fraction of a microsecond; building a matcher is what compiles)."""

    def __init__(self, template, eos_token_ids: tuple[int, ...], words: int, token_bytes: TokenBytes) -> None:
        self._template = template
        self.eos_token_ids = eos_token_ids
        self.words = words  # int32 words in one row of its bitmask
        self.token_bytes = token_bytes

    def new_state(self) -> "GrammarState":
        return GrammarState(self._template.deep_copy(), self.eos_token_ids, self.words, self.token_bytes)


class GrammarCompiler:
    """Compiles GrammarSpecs for one tokenizer, with an LRU cache keyed by (kind, spec text). Thread-safe.

    tokenizer: a fast (Rust ``tokenizers``) Hugging Face tokenizer. vocab_size: the model's (the logits' width;
    the bitmask covers the larger of it and the tokenizer's). eos_token_ids: the tokens that end an answer; the
    mask allows them once the grammar is complete. The tokenizer is wrapped on first use (0.3-0.5 s and 35 MB for a
    49k vocabulary), so an engine that never sees a grammar never pays for it.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int], *,
                 max_cached: int = MAX_CACHED_GRAMMARS) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(sorted(set(eos_token_ids)))
        self.max_cached = max_cached
        self.hits = self.misses = 0
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar | str] = OrderedDict()
        self._lock = threading.Lock()
        self._ll_tokenizer = None
        self._words = 0
        self.token_bytes: TokenBytes | None = None  # every token's bytes, as the grammar engine sees them

    def _tokenizer(self):
        if self._ll_tokenizer is None:
            with self._lock:
                if self._ll_tokenizer is None:
                    self._ll_tokenizer = self._wrap_tokenizer()
        return self._ll_tokenizer

    def _wrap_tokenizer(self):
        llg = _llguidance()
        if llg is None:
            raise ValueError(_INSTALL)
        if not self.eos_token_ids:
            raise ValueError("structured outputs need a model with an end-of-sequence token")
        self.token_bytes = token_bytes(self.tokenizer)  # raises ValueError for a slow tokenizer
        n_vocab = max(self.vocab_size, len(self.token_bytes))
        table = _TokenTable(self.tokenizer, self.token_bytes, n_vocab, self.eos_token_ids[0])
        wrapped = llg.LLTokenizer(llg.TokenizerWrapper(table), n_vocab=n_vocab, eos_token=list(self.eos_token_ids))
        table.greedy = wrapped.greedy_tokenize
        self._words = (wrapped.vocab_size + 31) // 32
        return wrapped

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """The compiled grammar of a spec (cached); raises ValueError starting with ``spec.param``."""
        spec.validate()
        key = spec.key
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                self.hits += 1
        if found is None:
            found = self._compile(spec)  # outside the lock: two threads may compile one spec once each, harmlessly
            with self._lock:
                self.misses += 1
                self._cache[key] = found
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
        if isinstance(found, str):
            raise ValueError(f"{spec.param}: {found}")
        return found

    def new_state(self, spec: GrammarSpec) -> "GrammarState":
        state = self.compile(spec).new_state()
        state.param = spec.param
        return state

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar | str:
        """A CompiledGrammar, or the error message (without the parameter's name), which is cached as well."""
        try:
            tokenizer = self._tokenizer()
            grammar = grammar_text(spec)
        except ValueError as exc:
            message = str(exc)
            return message.split(": ", 1)[1] if message.startswith(spec.param + ": ") else message
        llg = _llguidance()
        template = llg.LLMatcher(tokenizer, grammar, log_level=0)  # never raises: errors are its state
        if template.is_error():
            return f"invalid {_NAMES[spec.kind]}: {_short(template.get_error())}"
        return CompiledGrammar(template, self.eos_token_ids, self._words, self.token_bytes)

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}


class _TokenTable:
    """What llguidance's TokenizerWrapper reads: every token's true bytes (engine/token_bytes.py) instead of
    llguidance's own reading of tokenizer.json, and a tokenizer for the text a grammar forces.

    The forced text must come back as tokens whose bytes are exactly that text: the tokenizer's own encoding
    where it is (byte-level BPE), else a greedy one over the table (a SentencePiece normalizer prepends a space,
    so ``SELECT`` would encode as `` SEL`` + ``ECT``)."""

    def __init__(self, tokenizer, table: TokenBytes, n_vocab: int, eos_token_id: int) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._pieces = table.pieces
        self.eos_token_id = eos_token_id
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        self.tokens = list(table.pieces) + [b""] * (n_vocab - len(table))  # ids past the tokenizer: never allowed
        # unresolved tokens are marked special too: no grammar text can then produce them
        self.special_token_ids = sorted(table.special | table.unresolved)
        self.greedy = None  # llguidance's greedy tokenizer over these bytes, set once it is built

    def __call__(self, text: str) -> list[int]:
        if isinstance(text, bytes):
            raise TypeError("text, not bytes")  # TokenizerWrapper probes this once and then sends str
        ids = self._backend.encode(text, add_special_tokens=False).ids
        pieces = self._pieces
        if self.greedy is None or b"".join(pieces[t] for t in ids if t < len(pieces)) == text.encode("utf-8"):
            return ids
        return self.greedy(text)


class GrammarState:
    """One request's place in its grammar. Used by the engine thread only."""

    __slots__ = ("_matcher", "eos_token_ids", "words", "token_bytes", "param")

    def __init__(self, matcher, eos_token_ids: tuple[int, ...], words: int, token_bytes: TokenBytes | None = None) -> None:
        self._matcher = matcher
        self.eos_token_ids = eos_token_ids
        self.words = words
        self.token_bytes = token_bytes
        self.param = "structured_outputs"  # the request parameter the grammar came from, for error messages

    def fill_mask(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 on the CPU, bit t % 32 of word t // 32).
        Does not change the state, so a retried sampling step may fill again. A state in error allows EOS only."""
        self._matcher.unsafe_compute_mask_ptr(_row_pointer(bitmask, row, self.words), self.words * 4)

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar does not allow it (the state is then in error)."""
        return self._matcher.consume_token(token_id)

    def is_terminated(self) -> bool:
        """Nothing but EOS can follow, or EOS was accepted: the request should end. Also true in error: check
        :attr:`error` first, an answer in error is not complete."""
        return self._matcher.is_stopped()

    def allows_eos(self) -> bool:
        """Whether the answer so far is complete, so EOS may end it (it may still go on, e.g. ``[0-9]+``)."""
        return self._matcher.is_accepting()

    @property
    def error(self) -> str | None:
        """Why the grammar cannot go on (a refused token, or nothing but a premature end left), else None."""
        return self._matcher.get_error() if self._matcher.is_error() else None

    def text(self, token_ids: list[int]) -> str:
        """The answer's text: the very bytes the grammar matched (special tokens add none)."""
        return self.token_bytes.text(token_ids)


def apply_masks(logits: torch.Tensor, states: list[GrammarState | None], *, inplace: bool = False) -> torch.Tensor:
    """``logits`` [N, V] with each row whose state is not None masked to the tokens its grammar allows next (-inf
    elsewhere): one batched fill and one batched tensor op over those rows only. Returns ``logits`` itself when no
    row has a grammar. Not in place by default (the engine's logits are inference tensors, and a retried sampling
    step re-reads them): a new tensor. ``inplace=True`` writes into ``logits`` (a copy the caller already owns, e.g.
    after the penalties made one), which saves a [N, V] copy: 20 ms of 30 at 256 x 49152 on a small CPU."""
    rows = [i for i, s in enumerate(states) if s is not None]
    if not rows:
        return logits
    active = [states[i] for i in rows]
    bitmask = allocate_bitmask(len(rows), active[0].words)
    fill_masks(active, bitmask)
    if inplace:
        apply_bitmask(logits, bitmask, None if len(rows) == len(states) else torch.tensor(rows, dtype=torch.int64))
        return logits
    width = min(logits.shape[1], bitmask.shape[1] * 32)
    if len(rows) == len(states) and width == logits.shape[1]:  # every row: one out-of-place pass
        return logits.masked_fill(_banned(bitmask, width, logits.device), float("-inf"))
    out = logits.clone()
    apply_bitmask(out, bitmask, None if len(rows) == len(states) else torch.tensor(rows, dtype=torch.int64))
    return out


__all__ = ["KINDS", "MAX_SPEC_CHARS", "MAX_SCHEMA_DEPTH", "CompiledGrammar", "GrammarCompiler", "GrammarSpec",
           "GrammarState", "allocate_bitmask", "apply_bitmask", "apply_masks", "check", "check_depth", "fill_masks",
           "grammar_text"]
