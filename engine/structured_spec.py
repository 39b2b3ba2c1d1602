"""What a structured output is constrained to (GrammarSpec), its bounds, and its grammar text (no tokenizer).

engine/structured.py compiles these for a tokenizer; jobs/batch/structured_outputs.py builds them from request
bodies and calls :func:`check`, so a bad schema, regex or grammar fails when its line is validated.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pagebatch.engine.regex_dialect import lark_regex, schema_with_ascii_patterns

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
    def param(self) -> str:
        """The parameter error messages start with."""
        return self.source if isinstance(self.source, str) and self.source.isidentifier() else "structured_outputs"

    @property
    def key(self) -> tuple[str, str]:
        """What the compiled grammar depends on (not the source: one schema from two parameters compiles once)."""
        return (self.kind, "" if self.kind == "json_object" else self.spec)

    def validate(self) -> None:
        """Shape and bounds only, without compiling; raise ValueError naming the source parameter."""
        source = self.param
        if self.kind not in KINDS:
            raise ValueError(f"{source}: the constraint kind must be one of {', '.join(KINDS)}, "
                             f"got {str(self.kind)[:40]!r}")
        name = _NAMES[self.kind]
        if not isinstance(self.spec, str):
            raise ValueError(f"{source}: the {name} must be given as a string")
        if len(self.spec) > MAX_SPEC_CHARS:
            raise ValueError(f"{source}: the {name} is {len(self.spec)} characters long; "
                             f"at most {MAX_SPEC_CHARS} are accepted")
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
        raise ValueError(f"{spec.param}: {_INSTALL}")
    try:
        if spec.kind == "json_schema":
            schema = schema_with_ascii_patterns(json.loads(spec.spec))
            return llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_JSON_OPTIONS)
        if spec.kind == "json_object":
            return llg.LLMatcher.grammar_from_json_schema('{"type": "object"}', overrides=_JSON_OPTIONS)
        if spec.kind == "regex":
            return llg.LLMatcher.grammar_from_lark(f"start: /{lark_regex(spec.spec)}/")
        if spec.kind == "choice":
            return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choices))
        return llg.grammar_from("grammar", spec.spec)  # Lark as is; GBNF converted to Lark
    except (ValueError, RecursionError, TypeError) as exc:  # e.g. GBNF that does not convert
        raise ValueError(f"{spec.param}: invalid {_NAMES[spec.kind]}: {_short(str(exc))}") from None


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
        raise ValueError(f"{spec.param}: {error}")


def _grammar_error(grammar: str, kind: str) -> str:
    """'' when llguidance accepts the grammar, else why not (the message without the parameter's name)."""
    is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar, None)
    return f"invalid {_NAMES[kind]}: {_short(messages[0] if messages else 'rejected')}" if is_error else ""


__all__ = ["KINDS", "MAX_CHOICES", "MAX_SCHEMA_DEPTH", "MAX_SPEC_CHARS", "GrammarSpec", "check", "check_depth",
           "grammar_text"]
