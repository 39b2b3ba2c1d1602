"""The one regex dialect of structured outputs: bare regexes and JSON-schema ``pattern``s mean the same thing.

The shorthand classes are ASCII, as vLLM's regex option gives them: ``\\d`` is ``[0-9]``, ``\\w`` is
``[0-9A-Za-z_]``, ``\\s`` is ``[ \\t\\n\\r\\f\\v]``. Their complements leave out what *any* reading counts as a
digit, word character or space: ``\\D`` allows no Unicode decimal digit, ``\\W`` no letter, number, mark or
connector, ``\\S`` no Unicode space (a ``[^...]`` around ``\\d``, ``\\w``, ``\\s`` likewise). So an answer matches its
pattern in Python's ``re`` with ``re.ASCII`` and without it, and a JSON-schema validator (which reads patterns with
Unicode classes) agrees. The grammar engine's own defaults differ (Unicode classes in a bare regex, ASCII
``\\d``/``\\w`` but Unicode ``\\s`` in a schema), so every pattern is rewritten before it is compiled. Unicode is one
escape away: ``\\p{Nd}``, ``\\p{L}``, ``\\p{Zs}``. Everything else is the Rust ``regex`` crate's syntax (no
look-around, no back-references). A bare regex matches the whole answer; a ``pattern`` may match anywhere in its
string, as JSON Schema says.
"""
from __future__ import annotations

from typing import Any

# (outside a class, inside a class, inside a negated class): the narrowest set in every reading where the class is
# allowed, the widest where it is excluded
_CLASSES = {
    "d": ("[0-9]", "0-9", r"\p{Nd}"),
    "w": ("[0-9A-Za-z_]", "0-9A-Za-z_", r"\p{L}\p{N}\p{M}\p{Pc}"),
    "s": (r"[ \t\n\r\f\v]", r" \t\n\r\f\v", r"\s\x1C-\x1F"),
    "D": (r"\P{Nd}", r"\P{Nd}", "[^0-9]"),
    "W": (r"[^\p{L}\p{N}\p{M}\p{Pc}]", r"[^\p{L}\p{N}\p{M}\p{Pc}]", "[^0-9A-Za-z_]"),
    "S": (r"[^\s\x1C-\x1F]", r"[^\s\x1C-\x1F]", r"[^ \t\n\r\f\v]"),
}
# The keywords whose values are schemas, lists of schemas, or maps of names to schemas (JSON Schema 2020-12 and
# draft 7): where the walk looks for more ``pattern``s. A property *named* "pattern" is never rewritten.
_SUBSCHEMA = ("additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then",
              "else", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")


def ascii_classes(pattern: str) -> str:
    """``pattern`` with its shorthand classes rewritten to the dialect (also inside ``[...]``)."""
    out: list[str] = []
    negated: list[bool] = []  # one entry per open character class, innermost last
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            escape = pattern[i + 1]
            if escape in _CLASSES:
                outside, inside, excluded = _CLASSES[escape]
                out.append(outside if not negated else excluded if negated[-1] else inside)
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and negated and pattern.startswith("[:", i):  # a POSIX class, [:alpha:], copied as it is
            end = pattern.find(":]", i + 2)
            end = n if end < 0 else end + 2
            out.append(pattern[i:end])
            i = end
            continue
        if c == "[":
            start = i + 1
            negate = start < n and pattern[start] == "^"
            if negate:
                start += 1
            if start < n and pattern[start] == "]":  # a ']' first in a class is itself
                start += 1
            out.append(pattern[i:start])
            negated.append(negate if not negated else negate != negated[-1])
            i = start
            continue
        if c == "]" and negated:
            negated.pop()
        out.append(c)
        i += 1
    return "".join(out)


def lark_regex(pattern: str) -> str:
    """``pattern`` in the dialect, ready to stand between the slashes of a Lark ``/.../``."""
    import llguidance

    return llguidance.regex_to_lark(ascii_classes(pattern), "")


def schema_with_ascii_patterns(schema: Any) -> Any:
    """A copy of a JSON schema whose ``pattern`` values and ``patternProperties`` keys use :func:`ascii_classes`."""
    if isinstance(schema, list):
        return [schema_with_ascii_patterns(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("pattern"), str):
        out["pattern"] = ascii_classes(out["pattern"])
    if isinstance(out.get("patternProperties"), dict):
        out["patternProperties"] = {ascii_classes(k): schema_with_ascii_patterns(v)
                                    for k, v in out["patternProperties"].items()}
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), (dict, list)):
            out[key] = schema_with_ascii_patterns(out[key])
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [schema_with_ascii_patterns(s) for s in out[key]]
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: schema_with_ascii_patterns(s) for name, s in out[key].items()}
    return out


__all__ = ["ascii_classes", "lark_regex", "schema_with_ascii_patterns"]
