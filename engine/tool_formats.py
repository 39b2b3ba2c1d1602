"""Tool calling, per model family: how the functions reach the prompt, the grammar an answer follows, and how the
calls are read back out of it.

The format is the checkpoint's own, told by its chat template (as vLLM's tool parsers are chosen):

- ``hermes``: the template mentions ``<tool_call>`` (Qwen2.5, Qwen3, Hermes): calls are
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, after optional text.
- ``llama3_json``: a Llama 3.x template (``<|python_tag|>`` / ``<|start_header_id|>`` with tools): an answer is
  either text or calls ``{"name": ..., "parameters": {...}}`` separated by ``;``.
- ``mistral``: the template mentions ``[TOOL_CALLS]`` and the tokenizer has it as a token: an answer is text or
  ``[TOOL_CALLS]`` followed by a JSON list of ``{"name", "arguments"}`` (or, where the tokenizer has ``[ARGS]``,
  ``[TOOL_CALLS]name[ARGS]{...}`` per call).
- ``generic``, for every other template (SmolLM2's has no tool format): the functions are described in the
  system turn (:func:`generic_instructions`, documented in docs/api.md) and calls are written as in ``hermes``;
  earlier calls and tool results in the conversation are rendered as that text.

The first three pass ``tools`` to the template (``apply_chat_template(tools=...)``), so the model sees them as it
was trained to. In every format the answer is constrained by a Lark grammar (llguidance): ``auto`` lets the model
write text, but a call that starts always completes, with arguments valid against the function's parameters
schema; ``required`` and a named function allow nothing but calls. :meth:`ToolFormat.parse` reads the calls of a
complete answer back; the grammar guarantees it can.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pagebatch.engine.outputs import ToolCall
from pagebatch.engine.regex_dialect import schema_with_ascii_patterns
from pagebatch.engine.token_bytes import TokenBytes
from pagebatch.engine.tool_spec import ToolCalling

_JSON_OPTIONS = {"whitespace_flexible": False, "lenient": False}
_TAG_OPEN, _TAG_CLOSE = "<tool_call>", "</tool_call>"
_TAG_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclass(frozen=True)
class ToolFormat:
    """One family's tool-call format. ``name``: hermes | llama3_json | mistral | generic. ``call_token`` /
    ``args_token``: mistral's ``[TOOL_CALLS]`` and ``[ARGS]`` token ids."""

    name: str
    call_token: int | None = None
    args_token: int | None = None

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template itself renders the functions (else they go into the system turn)."""
        return self.name != "generic"

    # -- the prompt -------------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict[str, Any]], calling: ToolCalling | None
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The messages to render and the ``tools`` argument of the chat template."""
        if self.renders_tools:
            tools = None if calling is None else [{"type": "function", "function": f} for f in calling.definitions]
            return messages, tools
        out = [_generic_message(m) for m in messages]
        if calling is not None:
            text = generic_instructions(calling)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"].rstrip() + "\n\n" + text}
            else:
                out.insert(0, {"role": "system", "content": text})
        return out, None

    # -- the grammar ------------------------------------------------------------------------------------------
    @lru_cache(maxsize=256)  # a batch repeats its tools on every line: build the text once
    def grammar(self, calling: ToolCalling) -> str:
        """The Lark grammar (llguidance's dialect) every answer of this request follows."""
        if self.name == "llama3_json":
            body = _json_rule("body", _calls_schema(calling, "parameters"))
            calls = 'body (";" " "? body)*' if calling.many else "body"
            if calling.at_least_one:
                return f"start: {calls}\n{body}\n"
            return f"start: TEXT | {calls}\nTEXT: /(?s:.*)/ & ~/[ \\t\\r\\n]*\\{{(?s:.*)/\n{body}\n"
        if self.name == "mistral":
            return self._mistral_grammar(calling)
        body = _json_rule("body", _calls_schema(calling, "arguments"))
        more = ' (SEP "<tool_call>" call_tail)*' if calling.many else ""
        rules = f'call_tail: "\\n"? body "\\n"? "</tool_call>"\nSEP: /\\n?/\n{body}\n'
        if calling.at_least_one:
            return f'start: "<tool_call>" call_tail{more}\n{rules}'
        return (f"start: TEXT | head call_tail{more}\n"
                "TEXT: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/\n"
                "head[lazy]: /(?s:.*)<tool_call>/\n" + rules)

    def _mistral_grammar(self, calling: ToolCalling) -> str:
        call = f"<[{self.call_token}]>"
        if self.args_token is None:  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
            schema = {"type": "array", "items": _calls_schema(calling, "arguments"), "minItems": 1}
            if not calling.many:
                schema["maxItems"] = 1
            calls = f"{call} body"
            rules = _json_rule("body", schema)
        else:  # [TOOL_CALLS]name[ARGS]{...}, once per call
            options, rules = [], []
            for i, f in enumerate(calling.definitions):
                options.append(f"{json.dumps(f['name'])} <[{self.args_token}]> args{i}")
                rules.append(_json_rule(f"args{i}", _parameters(f)))
            calls = f"({call} ({' | '.join(options)}))" + ("+" if calling.many else "")
            rules = "\n".join(rules)
        if calling.at_least_one:
            return f"start: {calls}\n{rules}\n"
        return f"start: TEXT | {calls}\nTEXT: /(?s:.*)/\n{rules}\n"

    # -- reading the answer -----------------------------------------------------------------------------------
    def parse(self, token_ids: list[int], table: TokenBytes) -> tuple[str, list[ToolCall]] | None:
        """(the text before the calls, the calls) of a complete answer; None when it is not one."""
        try:
            if self.name == "mistral":
                return self._parse_mistral(token_ids, table)
            text = table.text(token_ids)
            if self.name == "llama3_json":
                return _parse_json_calls(text)
            start = text.find(_TAG_OPEN)
            if start < 0:
                return text, []
            calls = [_call(json.loads(body), "arguments") for body in _TAG_CALL.findall(text, start)]
            return text[:start].rstrip(), calls
        except (ValueError, KeyError, TypeError):
            return None

    def _parse_mistral(self, token_ids: list[int], table: TokenBytes) -> tuple[str, list[ToolCall]]:
        if self.call_token not in token_ids:
            return table.text(token_ids), []
        first = token_ids.index(self.call_token)
        content = table.text(token_ids[:first]).rstrip()
        if self.args_token is None:
            return content, [_call(c, "arguments") for c in json.loads(table.text(token_ids[first + 1:]))]
        calls, segment = [], []
        for t in token_ids[first + 1:] + [self.call_token]:
            if t != self.call_token:
                segment.append(t)
                continue
            split = segment.index(self.args_token)
            name = table.text(segment[:split]).strip()
            calls.append(ToolCall(name, _compact(json.loads(table.text(segment[split + 1:])))))
            segment = []
        return content, calls


def detect(tokenizer) -> ToolFormat:
    """The tool-call format of a tokenizer's chat template (``generic`` when it has none)."""
    source = _template_source(tokenizer)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if _TAG_OPEN in source:
        return ToolFormat("hermes")
    if "[TOOL_CALLS]" in source and "[TOOL_CALLS]" in vocab:
        return ToolFormat("mistral", vocab["[TOOL_CALLS]"], vocab.get("[ARGS]"))
    if "tools" in source and ("<|python_tag|>" in source or "<|start_header_id|>" in source):
        return ToolFormat("llama3_json")
    return ToolFormat("generic")


def generic_instructions(calling: ToolCalling) -> str:
    """The system-turn text that describes the functions to a model whose template has no tool format."""
    lines = "\n".join(json.dumps(f, ensure_ascii=False) for f in calling.definitions)
    if calling.function is not None:
        rule = f"Call the function {calling.function}."
    elif calling.choice == "required":
        rule = "You must call at least one of them."
    else:
        rule = "Call one when it helps; otherwise answer in plain text."
    many = " one after another" if calling.many else ""
    return ("# Tools\n\nYou can call these functions (one JSON object per line):\n<tools>\n" + lines + "\n</tools>\n\n"
            f"To call a function, write{many}: <tool_call>{{\"name\": <function name>, \"arguments\": "
            f"<arguments as a JSON object>}}</tool_call>\n{rule}")


def _template_source(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    return template if isinstance(template, str) else ""


def _generic_message(message: dict[str, Any]) -> dict[str, Any]:
    """A conversation turn with calls or a tool result, as the text a template without tools can render."""
    if message.get("tool_calls"):
        calls = "\n".join(_TAG_OPEN + json.dumps({"name": c["function"]["name"],
                                                  "arguments": c["function"]["arguments"]}, ensure_ascii=False)
                          + _TAG_CLOSE for c in message["tool_calls"])
        content = message.get("content") or ""
        return {"role": "assistant", "content": (content.rstrip() + "\n" if content else "") + calls}
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    return {"role": message["role"], "content": message["content"]}


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    return schema_with_ascii_patterns(function["parameters"])


def _calls_schema(calling: ToolCalling, arguments: str) -> dict[str, Any]:
    """One call of any allowed function: ``{"name": <its name>, <arguments>: <its parameters>}``."""
    options = [{"type": "object", "properties": {"name": {"const": f["name"]}, arguments: _parameters(f)},
                "required": ["name", arguments], "additionalProperties": False} for f in calling.definitions]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _json_rule(name: str, schema: dict[str, Any]) -> str:
    return f"{name}: %json {json.dumps({**schema, 'x-guidance': _JSON_OPTIONS}, ensure_ascii=False)}"


def _call(data: Any, arguments: str) -> ToolCall:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError("not a call")
    return ToolCall(data["name"], _compact(data[arguments] if arguments in data else data["arguments"]))


def _compact(arguments: Any) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _parse_json_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Llama 3.x: text, or JSON calls separated by ';'."""
    rest = text.strip()
    if not rest.startswith("{"):
        return text, []
    decoder, calls, at = json.JSONDecoder(), [], 0
    while at < len(rest):
        data, at = decoder.raw_decode(rest, at)
        calls.append(_call(data, "parameters"))
        while at < len(rest) and rest[at] in "; \t\r\n":
            at += 1
    return "", calls


__all__ = ["ToolFormat", "detect", "generic_instructions"]
