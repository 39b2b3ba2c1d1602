"""Tool calling in chat bodies: ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (and the legacy ``functions``
/ ``function_call``) -> one ToolCalling (or None), and the conversation turns that carry calls and their results.

Pure parsing, no tokenizer. Errors are ``ValueError("<parameter>: <why>")`` (requests.py turns them into a
LineError naming the parameter). Every function's ``parameters`` schema is checked here, once, as a JSON schema
(the grammar engine builds it), so a bad one fails at validation. ``tool_choice: "none"`` (or no tools) asks for a
text answer: no ToolCalling, the functions are not rendered. The legacy ``functions`` allow one call, answered as
``message.function_call`` with ``finish_reason: "function_call"``, as OpenAI answered them.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from pagebatch.engine.structured import GrammarSpec, check, check_depth
from pagebatch.engine.tool_spec import MAX_TOOLS, NAME, ToolCalling

TOOL_KEYS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"})


class Unsupported(ValueError):
    """A tool feature this server does not offer (hosted tools, allowed_tools): ``unsupported_parameter``."""


def parse_tools(body: Mapping[str, Any]) -> tuple[ToolCalling | None, bool]:
    """(the request's ToolCalling or None, whether it came from the legacy ``functions``)."""
    tools, functions = body.get("tools"), body.get("functions")
    if tools is not None and functions is not None:
        raise ValueError("functions: give tools or the legacy functions, not both")
    legacy = functions is not None or body.get("function_call") is not None
    if legacy and body.get("tool_choice") is not None:
        raise ValueError("tool_choice: give tool_choice with tools, or function_call with functions")
    if functions is not None:
        definitions = _functions("functions", functions, wrapped=False)
    else:
        definitions = _functions("tools", tools, wrapped=True) if tools is not None else []
    param = "function_call" if legacy else "tool_choice"
    choice, function = _choice(param, body.get(param), legacy)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ValueError("parallel_tool_calls: must be a boolean")
    if choice == "none" or not definitions:
        if choice == "required" or function is not None:
            raise ValueError(f"{param}: {'a named function' if function else 'required'} needs "
                             f"{'functions' if legacy else 'tools'} to call")
        return None, legacy
    names = [d["name"] for d in definitions]
    if function is not None and function not in names:
        raise ValueError(f"{param}: no function named {function[:64]!r} in {'functions' if legacy else 'tools'}")
    calling = ToolCalling(json.dumps(definitions, ensure_ascii=False), choice, function,
                          False if legacy else parallel is not False)
    calling.validate()
    return calling, legacy


def _functions(param: str, value: Any, wrapped: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise ValueError(f"{param}: must be a list of at most {MAX_TOOLS} {'tools' if wrapped else 'functions'}")
    out, seen = [], set()
    for i, item in enumerate(value):
        if wrapped:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind != "function":
                shown = f"{kind[:40]!r} tools are" if isinstance(kind, str) else "this tool is"
                raise Unsupported(f"{param}: {shown} not supported; only function tools "
                                 '({"type": "function", "function": {...}}) are')
            item = item.get("function")
        if not isinstance(item, dict):
            raise ValueError(f"{param}[{i}]: must be a function object with a name and a parameters schema")
        name = item.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{param}[{i}]: the function name must be 1 to 64 letters, digits, _ or -")
        if name in seen:
            raise ValueError(f"{param}[{i}]: the function name {name!r} is given twice")
        seen.add(name)
        description, parameters, strict = item.get("description"), item.get("parameters"), item.get("strict")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{param}[{i}]: description must be a string")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"{param}[{i}]: strict must be a boolean (arguments are always enforced)")
        definition: dict[str, Any] = {"name": name}
        if description:
            definition["description"] = description
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise ValueError(f"{param}[{i}]: parameters must be a JSON schema object")
            check_depth(parameters, param)
            try:
                check(GrammarSpec("json_schema", json.dumps(parameters, ensure_ascii=False), param))
            except ValueError as exc:
                raise ValueError(f"{param}[{i}] ({name}): {str(exc).split(': ', 1)[-1]}") from None
            definition["parameters"] = parameters
        out.append(definition)
    return out


def _choice(param: str, value: Any, legacy: bool) -> tuple[str, str | None]:
    """(auto | required | none, the named function or None)."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        allowed = ("none", "auto") if legacy else ("none", "auto", "required")
        if value not in allowed:
            raise ValueError(f"{param}: must be one of {', '.join(allowed)} or a function, got {value[:40]!r}")
        return value, None
    if isinstance(value, dict):
        if legacy:
            name = value.get("name")
        elif value.get("type") == "function":
            function = value.get("function")
            name = function.get("name") if isinstance(function, dict) else value.get("name")
        else:
            kind = value.get("type")
            raise Unsupported(f"{param}: {str(kind)[:40]!r} is not supported; give none, auto, required or "
                             '{"type": "function", "function": {"name": ...}}')
        if isinstance(name, str) and name:
            return "auto", name
    raise ValueError(f'{param}: a named function is {{"type": "function", "function": {{"name": ...}}}}'
                     if not legacy else f'{param}: a named function is {{"name": ...}}')


def assistant_calls(i: int, message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The calls of an assistant turn (``tool_calls``, or the legacy ``function_call``), arguments as objects where
    they are JSON objects (chat templates render them with ``tojson``)."""
    where = f"messages[{i}]"
    calls = message.get("tool_calls")
    if calls is None and message.get("function_call") is not None:
        calls = [{"id": f"call_{i}", "type": "function", "function": message["function_call"]}]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ValueError(f"messages: {where}.tool_calls must be a list")
    out = []
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f'messages: {where}.tool_calls[{k}] must be {{"id", "type": "function", '
                             '"function": {"name", "arguments"}}')
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments)
            except ValueError:
                parsed = None
            arguments = parsed if isinstance(parsed, dict) else arguments
        elif not isinstance(arguments, dict):
            raise ValueError(f"messages: {where}.tool_calls[{k}].function.arguments must be a JSON string")
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{i}_{k}"
        out.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return out


def tool_result(i: int, message: Mapping[str, Any], content: str, calls_by_id: dict[str, str]) -> dict[str, Any]:
    """A ``tool`` (or legacy ``function``) turn: its content, the call it answers and that call's function name."""
    if message["role"] == "function":
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"messages: messages[{i}] (role function) needs the function's name")
        return {"role": "tool", "content": content, "name": name, "tool_call_id": name}
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ValueError(f"messages: messages[{i}] (role tool) needs the tool_call_id of the call it answers")
    out = {"role": "tool", "content": content, "tool_call_id": call_id}
    if call_id in calls_by_id:
        out["name"] = calls_by_id[call_id]
    return out


__all__ = ["TOOL_KEYS", "Unsupported", "assistant_calls", "parse_tools", "tool_result"]
