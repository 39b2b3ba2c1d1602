"""Structured outputs: decoding constrained by a JSON schema, any JSON object, a regex, a label set or a grammar.

The grammar engine is llguidance (``pip install 'pagebatch[structured]'``; imported only when a request has a
grammar): its masks are bit-identical to xgrammar's in time and cost, and it refuses the JSON-schema keywords it
cannot enforce (``not``, ``uniqueItems``, ``if``/``then``, ...) instead of ignoring them, so an answer that ends
always validates (scripts/bench_structured.py has the numbers).

- :class:`GrammarSpec` says what to constrain to: a frozen dataclass of strings, so SamplingParams can carry it
  and shards can store it (``dataclasses.asdict``; :meth:`GrammarSpec.coerce` rebuilds it from that dict).
- :class:`GrammarCompiler` (one per engine) turns a spec into a :class:`CompiledGrammar`, cached by (kind, spec
  text) in an LRU: a labeling batch repeats one schema on every line and compiles it once. Errors are cached too.
- :class:`GrammarState` is one request's matcher: :meth:`~GrammarState.fill_mask`, :meth:`~GrammarState.accept`,
  :meth:`~GrammarState.is_terminated`. No rollback: the engine never un-generates a token (a preempted request
  keeps its tokens and is recomputed).
- :func:`apply_masks` masks the rows that have a grammar, in place, one batched fill (llguidance's thread pool)
  and one batched tensor op; the other rows are not touched.

JSON is generated compact (``{"a":1,"b":[2]}``: no whitespace between tokens), which keeps a small model from
looping on whitespace and costs fewer tokens. An answer ends when its grammar can take nothing but EOS
(``is_terminated``); one that runs out of max_tokens first is cut, as any answer is.

Every error is a ValueError whose message starts with the request parameter the spec came from
(``response_format: ...``), so one bad line fails alone with a clear error.
"""
from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
MAX_SPEC_CHARS = 64 * 1024  # a schema, regex or grammar's text
MAX_SCHEMA_DEPTH = 32  # nesting of a JSON schema document (objects and arrays)
MAX_CHOICES = 1024
MAX_CACHED_GRAMMARS = 256
# Kept from the schema's "x-guidance" options: lenient would silently drop keywords the grammar cannot enforce.
_JSON_OPTIONS = {"whitespace_flexible": False, "lenient": False}
_NAMES = {"json_schema": "JSON schema", "json_object": "JSON object", "regex": "regex", "choice": "choices",
          "grammar": "grammar"}
_INSTALL = "structured outputs need the llguidance package: pip install 'pagebatch[structured]'"


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's answer must match.

    kind: ``json_schema`` (spec: the schema as JSON text), ``json_object`` (spec ignored: any JSON object),
    ``regex`` (spec: the pattern; the whole answer matches it), ``choice`` (spec: a JSON list of the exact
    strings; the answer is one of them), ``grammar`` (spec: a Lark grammar, llguidance's dialect, or a GBNF/EBNF
    one as llama.cpp and vLLM's xgrammar take it: ``root ::= ...``).
    source: the request parameter the spec came from; error messages start with it.
    """

    kind: str
    spec: str = ""
    source: str = "structured_outputs"

    @classmethod
    def coerce(cls, value: Any) -> "GrammarSpec | None":
        """A spec, or the dict ``dataclasses.asdict`` made of one (a shard's stored SamplingParams), or None."""
        if value is None or isinstance(value, GrammarSpec):
            return value
        if isinstance(value, dict) and set(value) <= {"kind", "spec", "source"} and "kind" in value:
            return cls(**value)
        return value  # validate() reports it

    @property
    def choices(self) -> list[str] | None:
        """The labels of a ``choice`` spec (what the engine's label-set fast path takes), else None."""
        return json.loads(self.spec) if self.kind == "choice" else None

    @property
    def key(self) -> tuple[str, str]:
        """What the compiled grammar depends on (not the source: one schema from two parameters compiles once)."""
        return (self.kind, "" if self.kind == "json_object" else self.spec)

    def validate(self) -> None:
        """Shape and bounds only, without compiling; raise ValueError naming the source parameter."""
        source = self.source if isinstance(self.source, str) and self.source.isidentifier() else "structured_outputs"
        if self.kind not in KINDS:
            raise ValueError(f"{source}: the constraint kind must be one of {', '.join(KINDS)}, got {str(self.kind)[:40]!r}")
        name = _NAMES[self.kind]
        if not isinstance(self.spec, str):
            raise ValueError(f"{source}: the {name} must be given as a string")
        if len(self.spec) > MAX_SPEC_CHARS:
            raise ValueError(f"{source}: the {name} is {len(self.spec)} characters long; at most {MAX_SPEC_CHARS} are accepted")
        if self.kind in ("regex", "grammar") and not self.spec:
            raise ValueError(f"{source}: the {name} must not be empty")
        if self.kind == "json_schema":
            schema = _parse_json(self.spec, source, "the JSON schema")
            if not isinstance(schema, (dict, bool)):
                raise ValueError(f"{source}: the JSON schema must be an object")
            check_depth(schema, source)
        elif self.kind == "choice":
            labels = _parse_json(self.spec, source, "the choices")
            if not (isinstance(labels, list) and 0 < len(labels) <= MAX_CHOICES
                    and all(isinstance(c, str) and c for c in labels)):
                raise ValueError(f"{source}: the choices must be a list of 1 to {MAX_CHOICES} non-empty strings")


def check_depth(document: Any, source: str, limit: int = MAX_SCHEMA_DEPTH) -> None:
    """Refuse a JSON document nested deeper than ``limit`` objects/arrays (iteratively: no recursion to exhaust)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise ValueError(f"{source}: the JSON schema is nested more than {limit} levels deep")
                stack.append((child, depth + 1))


def _parse_json(text: str, source: str, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{source}: {what} is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {what} is not valid JSON ({exc})") from None


def _llguidance():
    try:
        import llguidance
    except ImportError:
        return None
    return llguidance


def grammar_text(spec: GrammarSpec) -> str:
    """The llguidance grammar for a validated spec (no tokenizer needed); raises ValueError naming the source."""
    llg = _llguidance()
    if llg is None:
        raise ValueError(f"{spec.source}: {_INSTALL}")
    try:
        if spec.kind == "json_schema":
            return llg.LLMatcher.grammar_from_json_schema(spec.spec, overrides=_JSON_OPTIONS)
        if spec.kind == "json_object":
            return llg.LLMatcher.grammar_from_json_schema('{"type": "object"}', overrides=_JSON_OPTIONS)
        if spec.kind == "regex":
            return llg.LLMatcher.grammar_from_regex(spec.spec)
        if spec.kind == "choice":
            return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choices))
        return llg.grammar_from("grammar", spec.spec)  # Lark as is; GBNF converted to Lark
    except (ValueError, RecursionError, TypeError) as exc:  # e.g. GBNF that does not convert
        raise ValueError(f"{spec.source}: invalid {_NAMES[spec.kind]}: {_short(str(exc))}") from None


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "..."


_check_cache: OrderedDict[tuple[str, str], str] = OrderedDict()
_check_lock = threading.Lock()


def check(spec: GrammarSpec) -> None:
    """Validate a spec completely (its grammar is built and checked, without a tokenizer): what the jobs layer
    calls when it parses a line, so a bad schema fails at validation. Results are cached by (kind, spec)."""
    spec.validate()
    if _llguidance() is None:  # the engine reports it per request; validation cannot tell without the package
        return
    with _check_lock:
        error = _check_cache.get(spec.key)
        if error is not None:
            _check_cache.move_to_end(spec.key)
    if error is None:
        try:
            error = _grammar_error(grammar_text(spec), spec.kind)
        except ValueError as exc:
            error = str(exc).split(": ", 1)[1]
        with _check_lock:
            _check_cache[spec.key] = error
            while len(_check_cache) > MAX_CACHED_GRAMMARS:
                _check_cache.popitem(last=False)
    if error:
        raise ValueError(f"{spec.source}: {error}")


def _grammar_error(grammar: str, kind: str) -> str:
    """'' when llguidance accepts the grammar, else why not (the message without the parameter's name)."""
    is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar, None)
    return f"invalid {_NAMES[kind]}: {_short(messages[0] if messages else 'rejected')}" if is_error else ""


class CompiledGrammar:
    """A grammar ready for one tokenizer: a matcher in its start state, copied for each request (copying is
    a fraction of a microsecond; building a matcher is what compiles)."""

    def __init__(self, template, eos_token_ids: tuple[int, ...], words: int) -> None:
        self._template = template
        self.eos_token_ids = eos_token_ids
        self.words = words  # int32 words in one row of its bitmask

    def new_state(self) -> "GrammarState":
        return GrammarState(self._template.deep_copy(), self.eos_token_ids, self.words)


class GrammarCompiler:
    """Compiles GrammarSpecs for one tokenizer, with an LRU cache keyed by (kind, spec text). Thread-safe.

    tokenizer: a fast (Rust ``tokenizers``) Hugging Face tokenizer. vocab_size: the model's (the logits' width;
    the bitmask covers the larger of it and the tokenizer's). eos_token_ids: the tokens that end an answer; the
    mask allows them once the grammar is complete. The tokenizer is wrapped on first use (about 0.2-2 s for a
    50k vocabulary), so an engine that never sees a grammar never pays for it.
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
        import llguidance.hf

        n_vocab = max(self.vocab_size, len(self.tokenizer))
        try:
            wrapped = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=n_vocab, eos_token=list(self.eos_token_ids))
        except ValueError as exc:  # a slow (Python) tokenizer
            raise ValueError(f"structured outputs need a fast tokenizer ({exc})") from None
        self._words = (wrapped.vocab_size + 31) // 32
        return wrapped

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """The compiled grammar of a spec (cached); raises ValueError starting with ``spec.source``."""
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
            raise ValueError(f"{spec.source}: {found}")
        return found

    def new_state(self, spec: GrammarSpec) -> "GrammarState":
        return self.compile(spec).new_state()

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar | str:
        """A CompiledGrammar, or the error message (without the parameter's name), which is cached as well."""
        try:
            tokenizer = self._tokenizer()
            grammar = grammar_text(spec)
        except ValueError as exc:
            message = str(exc)
            return message.split(": ", 1)[1] if message.startswith(spec.source + ": ") else message
        llg = _llguidance()
        template = llg.LLMatcher(tokenizer, grammar, log_level=0)  # never raises: errors are its state
        if template.is_error():
            return f"invalid {_NAMES[spec.kind]}: {_short(template.get_error())}"
        return CompiledGrammar(template, self.eos_token_ids, self._words)

    def cache_info(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}


class GrammarState:
    """One request's place in its grammar. Used by the engine thread only."""

    __slots__ = ("_matcher", "eos_token_ids", "words")

    def __init__(self, matcher, eos_token_ids: tuple[int, ...], words: int) -> None:
        self._matcher = matcher
        self.eos_token_ids = eos_token_ids
        self.words = words

    def fill_mask(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 on the CPU, bit t % 32 of word t // 32).
        Does not change the state, so a retried sampling step may fill again. A state in error allows EOS only."""
        self._matcher.unsafe_compute_mask_ptr(_row_pointer(bitmask, row, self.words), self.words * 4)

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar does not allow it (the state is then in error)."""
        return self._matcher.consume_token(token_id)

    def is_terminated(self) -> bool:
        """Nothing but EOS can follow (or EOS was accepted, or the state is in error): the request should end."""
        return self._matcher.is_stopped()

    def allows_eos(self) -> bool:
        """Whether the answer so far is complete, so EOS may end it (it may still go on, e.g. ``[0-9]+``)."""
        return self._matcher.is_accepting()

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() if self._matcher.is_error() else None


def _row_pointer(bitmask: torch.Tensor, row: int, words: int) -> int:
    if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or bitmask.dim() != 2 or not bitmask.is_contiguous():
        raise ValueError("the bitmask must be a contiguous 2-D int32 CPU tensor")
    if bitmask.shape[1] != words or not 0 <= row < bitmask.shape[0]:
        raise ValueError(f"the bitmask must be [rows, {words}] and row in range, got {tuple(bitmask.shape)} and {row}")
    return bitmask.data_ptr() + row * words * 4


def allocate_bitmask(rows: int, words: int) -> torch.Tensor:
    return torch.empty((rows, words), dtype=torch.int32)


_executor = None
_executor_lock = threading.Lock()


def fill_masks(states: list[GrammarState], bitmask: torch.Tensor) -> None:
    """Fill ``bitmask[i]`` for ``states[i]``, in parallel on llguidance's thread pool (without the GIL)."""
    global _executor
    if not states:
        return
    words = states[0].words
    if bitmask.shape[0] < len(states) or any(s.words != words for s in states):
        raise ValueError("fill_masks: one bitmask row per state, all of one vocabulary")
    _row_pointer(bitmask, 0, words)
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = _llguidance().LLExecutor()
    _executor.unsafe_compute_mask_ptr([(s._matcher, i) for i, s in enumerate(states)], bitmask.data_ptr(),
                                      words * 4, bitmask.shape[0])


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Set to -inf, in place, every logit whose bit is 0: ``logits[rows[i], t]`` by ``bitmask[i]`` (all rows in
    order when ``rows`` is None). The bitmask is on the CPU; logits anywhere. Logits past the bitmask's width
    are left alone; the bitmask's bits past the logits' width (tokenizer tokens the model lacks) are ignored."""
    n = bitmask.shape[0]
    if n == 0:
        return
    width = min(logits.shape[1], bitmask.shape[1] * 32)
    if logits.device.type == "cpu" and sys.byteorder == "little":
        banned = _banned_numpy(bitmask, width)
    else:
        banned = _banned_torch(bitmask.to(logits.device, non_blocking=True), width)
    if rows is None or (n == logits.shape[0] and _is_identity(rows)):
        logits[:, :width].masked_fill_(banned, float("-inf"))
        return
    rows = rows.to(logits.device)
    part = logits.index_select(0, rows)
    part[:, :width].masked_fill_(banned, float("-inf"))
    logits.index_copy_(0, rows, part)


def _banned_numpy(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """[n, width] bool, True where the bit is 0. Bit t % 32 of little-endian int32 word t // 32 is bit t % 8 of
    byte t // 8, and numpy unpacks bytes in one pass (a tenth of the time of the shifts below, on a CPU)."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=width, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_)).logical_not_()


def _banned_torch(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """The same on any device: 32 shifts per word, one fused elementwise pass on a GPU."""
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, :width] == 0


def _is_identity(rows: torch.Tensor) -> bool:
    return bool((rows.cpu() == torch.arange(len(rows))).all())


def apply_masks(logits: torch.Tensor, states: list[GrammarState | None]) -> None:
    """Mask, in place, each row of ``logits`` whose state is not None to the tokens its grammar allows next:
    one batched fill and one batched tensor op; rows without a grammar are not touched. ``logits``: [N, V]."""
    rows = [i for i, s in enumerate(states) if s is not None]
    if not rows:
        return
    active = [states[i] for i in rows]
    bitmask = allocate_bitmask(len(rows), active[0].words)
    fill_masks(active, bitmask)
    apply_bitmask(logits, bitmask, None if len(rows) == len(states) else torch.tensor(rows, dtype=torch.int64))


__all__ = ["KINDS", "MAX_SPEC_CHARS", "MAX_SCHEMA_DEPTH", "CompiledGrammar", "GrammarCompiler", "GrammarSpec",
           "GrammarState", "allocate_bitmask", "apply_bitmask", "apply_masks", "check", "check_depth", "fill_masks",
           "grammar_text"]
