"""What a request asks of tool calling (``SamplingParams.tools``): the functions it may call and how it must choose.

A frozen dataclass of strings and booleans, like GrammarSpec, so SamplingParams can carry it and shards can store
it (``dataclasses.asdict``; :meth:`ToolCalling.coerce` rebuilds it). The jobs layer builds it from OpenAI's
``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (or the legacy ``functions`` / ``function_call``);
``tool_choice: "none"`` never gets here (the request is then plain text). engine/tool_formats.py renders the
functions through the checkpoint's chat template, constrains the answer and parses the calls out of it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_TOOLS = 128
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
CHOICES = ("auto", "required")
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolCalling:
    """functions: JSON text of a list of ``{"name", "description", "parameters"}`` (OpenAI's function objects).
    choice: ``auto`` (text or calls, the model decides) or ``required`` (at least one call). function: the one
    function to call (OpenAI's named tool_choice; one call of it). parallel: more than one call allowed."""

    functions: str
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True

    @classmethod
    def coerce(cls, value: Any) -> "ToolCalling | None":
        """A ToolCalling, or the dict ``dataclasses.asdict`` made of one (a stored shard), or None."""
        if value is None or isinstance(value, ToolCalling):
            return value
        if isinstance(value, dict) and set(value) <= {"functions", "choice", "function", "parallel"} \
                and "functions" in value:
            return cls(**value)
        return value  # validate() reports it

    @property
    def definitions(self) -> list[dict[str, Any]]:
        """The callable functions (only the named one when ``function`` is set), parameters always present."""
        out = []
        for f in json.loads(self.functions):
            if self.function is not None and f["name"] != self.function:
                continue
            out.append({"name": f["name"], "description": f.get("description") or "",
                        "parameters": f.get("parameters") or EMPTY_PARAMETERS})
        return out

    @property
    def at_least_one(self) -> bool:
        return self.choice == "required" or self.function is not None

    @property
    def many(self) -> bool:
        return self.parallel and self.function is None

    def validate(self) -> None:
        """Raise ValueError starting with ``tools:`` (or ``tool_choice:``) naming what is wrong."""
        if not isinstance(self.functions, str):
            raise ValueError("tools: the functions must be given as JSON text")
        try:
            functions = json.loads(self.functions)
        except ValueError as exc:
            raise ValueError(f"tools: not valid JSON ({exc})") from None
        if not isinstance(functions, list) or not 0 < len(functions) <= MAX_TOOLS:
            raise ValueError(f"tools: give 1 to {MAX_TOOLS} functions")
        names = set()
        for f in functions:
            name = f.get("name") if isinstance(f, dict) else None
            if not isinstance(name, str) or not NAME.match(name):
                raise ValueError("tools: every function needs a name of 1 to 64 letters, digits, _ or -")
            if name in names:
                raise ValueError(f"tools: the function name {name!r} is given twice")
            names.add(name)
            if f.get("parameters") is not None and not isinstance(f["parameters"], dict):
                raise ValueError(f"tools: the parameters of {name!r} must be a JSON schema object")
        if self.choice not in CHOICES:
            raise ValueError(f"tool_choice: must be one of {', '.join(CHOICES)} or a function, got {str(self.choice)[:40]!r}")
        if self.function is not None and self.function not in names:
            raise ValueError(f"tool_choice: no function named {str(self.function)[:64]!r} in tools")
        if not isinstance(self.parallel, bool):
            raise ValueError("parallel_tool_calls: must be a boolean")


__all__ = ["EMPTY_PARAMETERS", "MAX_TOOLS", "NAME", "ToolCalling"]
