"""A request body's output constraint -> one GrammarSpec (or None): pure parsing, no tokenizer, no I/O.

The forms, at most one per body (two are refused, even when they agree):

- OpenAI ``response_format``: ``{"type": "text"}`` (no constraint), ``{"type": "json_object"}`` (any JSON
  object), ``{"type": "json_schema", "json_schema": {"name", "description", "schema", "strict"}}`` (the answer
  validates against ``schema``; it is enforced whether ``strict`` is true or not).
- vLLM's ``structured_outputs``: ``{"json": schema or its JSON text}``, ``{"regex": ...}``, ``{"choice": [...]}``,
  ``{"grammar": Lark or GBNF text}``, ``{"json_object": true}``; ``disable_any_whitespace``, ``disable_fallback``
  and ``disable_additional_properties`` are accepted and change nothing (JSON is always compact, there is one
  backend, and a schema means what it says).
- vLLM's older ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar`` (``guided_decoding_backend``
  is accepted and ignored).

Label sets keep the engine's fast path (a token trie, no grammar engine): ``structured_outputs.choice`` and
``guided_choice`` become ``GrammarSpec(kind="choice")`` with the labels themselves, and a JSON schema that is a
string enum (``{"type": "string", "enum": [...]}``, from any of the JSON forms) becomes a choice of the labels
JSON-encoded (``"positive"`` with its quotes), so the answer is valid JSON. ``spec.choices`` is what
``SamplingParams.choices`` takes.

Errors are ``ValueError("<parameter>: <why>")`` where ``<parameter>`` is the body's top-level key, so a line
fails alone with that parameter named. A schema, regex or grammar is at most 64 KiB and a schema is nested at
most 32 levels; every grammar is built once here (cached per spec text) so a bad one fails at validation.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from pagebatch.engine.structured import MAX_SCHEMA_DEPTH, MAX_SPEC_CHARS, GrammarSpec, check, check_depth

MAX_LABELS = 1024
MAX_LABEL_CHARS = 512
# The body keys this module reads: requests.py accepts them (and hands the body here).
BODY_KEYS = frozenset({"response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                       "guided_grammar", "guided_decoding_backend"})
_STRUCTURED_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                     "json_object": "json_object"}
_STRUCTURED_IGNORED = {"disable_any_whitespace", "disable_fallback", "disable_additional_properties"}
_LEGACY = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_SCHEMA_ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment"}
_JSON_SCHEMA_KEYS = {"name", "description", "schema", "strict"}


def parse_structured_outputs(body: Mapping[str, Any]) -> GrammarSpec | None:
    """The one output constraint of a request body, or None; raises ValueError("<parameter>: ...")."""
    found: list[GrammarSpec] = []
    response_format = body.get("response_format")
    if response_format is not None:
        spec = _response_format(response_format)
        if spec is not None:
            found.append(spec)
    if body.get("structured_outputs") is not None:
        found.append(_structured_outputs(body["structured_outputs"]))
    for param, kind in _LEGACY.items():
        if body.get(param) is not None:
            found.append(_constraint(param, kind, body[param]))
    backend = body.get("guided_decoding_backend")
    if backend is not None and not isinstance(backend, str):
        raise ValueError("guided_decoding_backend: must be a string (it is accepted and ignored: there is one backend)")
    if len(found) > 1:
        raise ValueError(f"{found[1].source}: give one output constraint; {found[0].source} is set too")
    if not found:
        return None
    spec = found[0]
    if spec.kind != "choice":
        check(spec)  # builds the grammar (cached): a bad schema, regex or grammar fails here, naming its parameter
    return spec


def _response_format(value: Any) -> GrammarSpec | None:
    param = "response_format"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError(f'{param}: must be an object with a "type": "text", "json_object" or "json_schema"')
    kind = value["type"]
    if kind not in ("text", "json_object", "json_schema"):
        raise ValueError(f'{param}: type {kind[:40]!r} is not supported by this server; the type must be "text", '
                         '"json_object" or "json_schema" (structured_outputs takes a regex, a choice or a grammar, '
                         'and tools take function calls)')
    extra = sorted(set(value) - ({"type", "json_schema"} if kind == "json_schema" else {"type"}))
    if extra:
        raise ValueError(f"{param}: unexpected field {extra[0][:40]!r} for type {kind[:20]!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "", param)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise ValueError(f'{param}: json_schema must be an object: {{"name": ..., "schema": {{...}}, "strict": true}}')
    extra = sorted(set(spec) - _JSON_SCHEMA_KEYS)
    if extra:
        raise ValueError(f"{param}: json_schema has an unexpected field {extra[0][:40]!r}; it takes "
                         f"{', '.join(sorted(_JSON_SCHEMA_KEYS))}")
    if spec.get("name") is not None and not (isinstance(spec["name"], str) and len(spec["name"]) <= 256):
        raise ValueError(f"{param}: json_schema.name must be a string of at most 256 characters")
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise ValueError(f"{param}: json_schema.description must be a string")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise ValueError(f"{param}: json_schema.strict must be a boolean")
    if spec.get("schema") is None:
        raise ValueError(f"{param}: json_schema.schema is required: the JSON schema the answer must validate against")
    return _json_schema(param, spec["schema"])


def _structured_outputs(value: Any) -> GrammarSpec:
    param = "structured_outputs"
    if not isinstance(value, dict):
        raise ValueError(f"{param}: must be an object with one of {', '.join(_STRUCTURED_KINDS)}")
    unknown = sorted(k for k in value if k not in _STRUCTURED_KINDS and k not in _STRUCTURED_IGNORED)
    set_unknown = [k for k in unknown if value[k] not in (None, False)]
    if set_unknown:
        raise ValueError(f"{param}: {str(set_unknown[0])[:40]} is not supported; give one of "
                         f"{', '.join(_STRUCTURED_KINDS)}")
    for key in _STRUCTURED_IGNORED:
        if value.get(key) is not None and not isinstance(value[key], bool):
            raise ValueError(f"{param}: {key} must be a boolean")
    given = [k for k in _STRUCTURED_KINDS if value.get(k) not in (None, False)]
    if len(given) != 1:
        raise ValueError(f"{param}: give exactly one of {', '.join(_STRUCTURED_KINDS)}"
                         + (f", got {' and '.join(given)}" if given else ""))
    key = given[0]
    if key == "json_object":
        if value[key] is not True:
            raise ValueError(f"{param}: json_object must be true")
        return GrammarSpec("json_object", "", param)
    return _constraint(param, _STRUCTURED_KINDS[key], value[key], f"{param}.{key}")


def _constraint(param: str, kind: str, value: Any, field: str | None = None) -> GrammarSpec:
    field = field or param
    if kind == "json_schema":
        if isinstance(value, str):
            if len(value) > MAX_SPEC_CHARS:
                raise ValueError(f"{param}: the JSON schema is {len(value)} characters long; at most {MAX_SPEC_CHARS} "
                                 "are accepted")
            try:
                value = json.loads(value)
            except RecursionError:
                raise ValueError(f"{param}: the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep") from None
            except ValueError as exc:
                raise ValueError(f"{param}: {field} is not valid JSON ({exc})") from None
        return _json_schema(param, value)
    if kind == "choice":
        return GrammarSpec("choice", json.dumps(_labels(param, field, value), ensure_ascii=False), param)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{param}: {field} must be a non-empty string")
    spec = GrammarSpec(kind, value, param)
    spec.validate()
    return spec


def _json_schema(param: str, schema: Any) -> GrammarSpec:
    if not isinstance(schema, dict):
        raise ValueError(f"{param}: the JSON schema must be an object")
    check_depth(schema, param)
    labels = _string_enum(schema)
    if labels is not None:  # the label-set fast path; the answer is the label as a JSON string
        return GrammarSpec("choice", json.dumps([json.dumps(label, ensure_ascii=False) for label in labels],
                                                ensure_ascii=False), param)
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))  # property order kept: it is the answer's
    spec = GrammarSpec("json_schema", text, param)
    spec.validate()
    return spec


def _string_enum(schema: dict) -> list[str] | None:
    """The labels of a schema that is exactly a string enum the label trie can take, else None."""
    if "enum" not in schema or schema.get("type", "string") != "string":
        return None
    if not set(schema) <= {"type", "enum"} | _SCHEMA_ANNOTATIONS:
        return None
    labels = schema["enum"]
    if not (isinstance(labels, list) and 0 < len(labels) <= MAX_LABELS
            and all(isinstance(v, str) and 0 < len(v) <= MAX_LABEL_CHARS for v in labels)):
        return None  # not a plain label set: the grammar engine takes it (or refuses it) as a schema
    return list(dict.fromkeys(labels))


def _labels(param: str, field: str, value: Any) -> list[str]:
    if not (isinstance(value, list) and 0 < len(value) <= MAX_LABELS):
        raise ValueError(f"{param}: {field} must be a list of 1 to {MAX_LABELS} labels")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_LABEL_CHARS for v in value):
        raise ValueError(f"{param}: every label must be a non-empty string of at most {MAX_LABEL_CHARS} characters")
    return list(dict.fromkeys(value))


__all__ = ["BODY_KEYS", "MAX_LABELS", "MAX_LABEL_CHARS", "parse_structured_outputs"]
