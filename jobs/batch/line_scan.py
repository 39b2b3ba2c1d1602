"""Reading one top-level field of a JSON line the parser cannot read (it nests deeper than Python recurses).

A line that fails to parse still names its request: its error line should carry the line's custom_id,
whatever the body holds. This scanner walks the text once, without recursion, and decodes only the
string it is asked for.
"""
from __future__ import annotations

import json
import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SPACE = " \t\r\n"


def top_level_string(raw: bytes | str, key: str) -> str | None:
    """The string value of ``key`` at the top level of a JSON object, or None (absent, not a string, not an object)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    i = _skip_space(text, 0)
    if i >= len(text) or text[i] != "{":
        return None
    depth, expecting_key = 0, False
    while i < len(text):
        c = text[i]
        if c == '"':
            match = _STRING.match(text, i)
            if match is None:
                return None
            if depth == 1 and expecting_key:
                j = _skip_space(text, match.end())
                if j >= len(text) or text[j] != ":":
                    return None
                j = _skip_space(text, j + 1)
                if _decode(match.group()) == key:
                    value = _STRING.match(text, j)
                    return None if value is None else _decode(value.group())
                expecting_key, i = False, j
                continue
            i = match.end()
            continue
        if c in "{[":
            depth += 1
            expecting_key = depth == 1
        elif c in "}]":
            depth -= 1
            if depth <= 0:
                return None
        elif c == "," and depth == 1:
            expecting_key = True
        i += 1
    return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _decode(literal: str) -> str | None:
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
