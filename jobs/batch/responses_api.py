"""The Responses API (``/v1/responses``) for text and function calls, in batches: a body becomes a chat body, an
output a Response.

A Responses body is translated once into the chat form the rest of the pipeline runs (``input`` and
``instructions`` to messages, ``max_output_tokens`` to ``max_completion_tokens``, ``text.format`` to
``response_format``, function ``tools`` and ``tool_choice`` to their chat forms, ``function_call`` /
``function_call_output`` input items to assistant calls and tool turns); what it cannot honour (hosted tools,
reasoning, stored conversations) fails the line, naming the parameter. Calls come back as ``function_call``
output items.
"""
from __future__ import annotations

import time
from typing import Any

from pagebatch.jobs.batch.ids import tool_call_id
from pagebatch.jobs.batch.requests import EngineRequest, LineError, check_parameters, to_engine_request
from pagebatch.jobs.batch.schema import CHAT, RESPONSES

__all__ = ["RESPONSES", "parse_body", "response_object", "to_chat_body"]

_ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "text", "metadata", "tools", "tool_choice",
           "parallel_tool_calls")

_IGNORED = {"model", "metadata", "store", "user", "service_tier", "prompt_cache_key", "safety_identifier",
            "truncation", "include"}
_MAPPED = {"input", "instructions", "max_output_tokens", "temperature", "top_p", "text", "top_logprobs", "tools",
           "tool_choice", "parallel_tool_calls"}
_UNSUPPORTED = {
    "max_tool_calls": "a cap on tool calls is not supported (parallel_tool_calls: false allows one call)",
    "reasoning": "reasoning models are not served here",
    "previous_response_id": "stored responses are not kept: send the whole input",
    "conversation": "stored conversations are not kept: send the whole input",
    "prompt": "stored prompt templates are not kept: send the whole input",
    "background": "batches already run in the background",
    "stream": "stream is not supported in batches",
}
_ROLES = {"user", "assistant", "system", "developer"}
_TEXT_PARTS = {"input_text", "output_text", "text"}


def parse_body(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> EngineRequest:
    """A line's body, for any supported endpoint, as the engine request it runs."""
    if endpoint != RESPONSES:
        return to_engine_request(endpoint, body, default_max_tokens)
    request = to_engine_request(CHAT, to_chat_body(body), default_max_tokens)
    request.echo = {name: body[name] for name in _ECHOED if body.get(name) is not None}
    return request


def to_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks the same of the model; LineError for what cannot be asked."""
    check_parameters(body, _IGNORED | _MAPPED, _UNSUPPORTED, unset=(None, False))
    messages = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise LineError("instructions must be a string", "invalid_parameter", "instructions")
        messages.append({"role": "system", "content": body["instructions"]})
    messages += _input_messages(body.get("input"))
    chat: dict[str, Any] = {"messages": messages}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("top_logprobs") is not None:
        chat["logprobs"], chat["top_logprobs"] = True, body["top_logprobs"]
    fmt = _text_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is not None:
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    return chat


def _tools(value: Any) -> list[dict[str, Any]]:
    """Responses function tools (``{"type": "function", "name", "parameters", ...}``) in their chat form."""
    if not isinstance(value, list):
        raise LineError("tools must be a list of function tools", "invalid_parameter", "tools")
    out = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            shown = f"{kind[:40]} tools are" if isinstance(kind, str) else "this tool is"
            raise LineError(f"tools[{i}]: {shown} not supported; only function tools "
                            '({"type": "function", "name": ..., "parameters": {...}}) are', "unsupported_parameter",
                            "tools")
        out.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return out


def _tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": value.get("name")}}
    if isinstance(value, dict):
        raise LineError(f"tool_choice: {str(value.get('type'))[:40]!r} is not supported; give none, auto, required "
                        'or {"type": "function", "name": ...}', "unsupported_parameter", "tool_choice")
    return value


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise LineError("input must be a non-empty string or a list of messages", "invalid_parameter", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in ("function_call", "function_call_output"):
            _function_item(i, item, messages)
            continue
        if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") not in _ROLES:
            if isinstance(kind, str) and kind != "message":
                raise LineError(f"input[{i}]: {kind[:40]} items are not supported; only messages are",
                                "unsupported_parameter", "input")
            raise LineError(f"input[{i}] needs a role in {sorted(_ROLES)}", "invalid_parameter", "input")
        content = item.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") in _TEXT_PARTS and isinstance(p.get("text"), str)
                       for p in content):
                raise LineError(f"input[{i}].content: only text parts (input_text) are supported",
                                "unsupported_parameter", "input")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise LineError(f"input[{i}].content must be a string or a list of text parts", "invalid_parameter",
                            "input")
        messages.append({"role": item["role"], "content": content})
    return messages


def _function_item(i: int, item: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    """A call the model made earlier (joined to the assistant turn before it) or the result of one (a tool turn)."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise LineError(f"input[{i}]: a {item['type']} item needs its call_id", "invalid_parameter", "input")
    if item["type"] == "function_call_output":
        output = item.get("output")
        if isinstance(output, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in output):
            output = "".join(p["text"] for p in output)
        if not isinstance(output, str):
            raise LineError(f"input[{i}].output must be a string or a list of text parts", "invalid_parameter", "input")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        return
    if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments"), str):
        raise LineError(f"input[{i}]: a function_call item needs its name and arguments (a JSON string)",
                        "invalid_parameter", "input")
    call = {"id": call_id, "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
    if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
        messages[-1]["tool_calls"].append(call)
    elif messages and messages[-1]["role"] == "assistant":
        messages[-1]["tool_calls"] = [call]
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _text_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"} or not (fmt is None or isinstance(fmt, dict)):
        raise LineError('text must be {"format": {...}}', "invalid_parameter", "text")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise LineError("text.format.type must be text, json_object or json_schema", "invalid_parameter", "text")


def response_object(model: str, output: Any, response_id: str, request: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """OpenAI's Response object for one engine output (``incomplete`` when max_output_tokens cut it)."""
    request = request or {}
    completion_tokens = len(output.token_ids)
    cut = output.finish_reason == "length"
    calls = (getattr(output, "tool_calls", None) or []) if not cut else []
    items: list[dict[str, Any]] = []
    if output.text or not calls:
        text = {"type": "output_text", "text": output.text, "annotations": [], "logprobs": []}
        items.append({"type": "message", "id": f"msg_{response_id}", "status": "incomplete" if cut else "completed",
                      "role": "assistant", "content": [text]})
    for k, call in enumerate(calls):
        call_id = tool_call_id(response_id, 0, k)
        items.append({"type": "function_call", "id": f"fc_{call_id[5:]}", "call_id": call_id, "name": call.name,
                      "arguments": call.arguments, "status": "completed"})
    return {
        "id": f"resp_{response_id}", "object": "response", "created_at": int(time.time()), "model": model,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
        "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {}, "output": items,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "tool_choice": request.get("tool_choice") or ("auto" if request.get("tools") else "none"),
        "tools": request.get("tools") or [],
        "usage": {"input_tokens": output.num_prompt_tokens,
                  "input_tokens_details": {"cached_tokens": output.num_cached_tokens, "cache_write_tokens": 0},
                  "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": output.num_prompt_tokens + completion_tokens},
    }
