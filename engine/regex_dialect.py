"""The one regex dialect of structured outputs: bare regexes and JSON-schema ``pattern``s mean the same thing.

The shorthand classes are ASCII, as in Python's ``re`` with ``re.ASCII`` and as vLLM's regex option gives them:
``\\d`` is ``[0-9]``, ``\\w`` is ``[0-9A-Za-z_]``, ``\\s`` is ``[ \\t\\n\\r\\f\\v]`` (and ``\\D``, ``\\W``, ``\\S`` their
complements). The grammar engine's own defaults differ (Unicode classes in a bare regex, ASCII ``\\d``/``\\w`` but
Unicode ``\\s`` in a schema), so every pattern is rewritten before it is compiled. Unicode stays one escape away:
``\\p{Nd}``, ``\\p{L}``, ``\\p{Zs}``. Everything else is the Rust ``regex`` crate's syntax (no look-around, no
back-references); a whole answer matches a bare regex (``re.fullmatch``), a ``pattern`` may match anywhere in its
string (``re.search``), as JSON Schema says.
"""
from __future__ import annotations

from typing import Any

# The keywords whose values are schemas, lists of schemas, or maps of names to schemas (JSON Schema 2020-12 and
# draft 7): where the walk looks for more ``pattern``s. A property *named* "pattern" is never rewritten.
_SUBSCHEMA = ("additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then",
              "else", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")


def ascii_classes(pattern: str) -> str:
    """``pattern`` with its shorthand classes made ASCII (also inside ``[...]``), ready for the grammar engine."""
    import llguidance

    return llguidance.regex_to_lark(pattern, "dws")


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


__all__ = ["ascii_classes", "schema_with_ascii_patterns"]
