"""The Responses API (``/v1/responses``) for text, in batches: a body becomes a chat body, an output a Response.

A Responses body is translated once into the chat form the rest of the pipeline runs (``input`` and
``instructions`` to messages, ``max_output_tokens`` to ``max_completion_tokens``, ``text.format`` to
``response_format``); what it cannot honour (tools, reasoning, stored conversations) fails the line,
naming the parameter.
"""
from __future__ import annotations

import time
from typing import Any

from pagebatch.jobs.batch.requests import EngineRequest, LineError, check_parameters, to_engine_request
from pagebatch.jobs.batch.schema import CHAT, RESPONSES

__all__ = ["RESPONSES", "parse_body", "response_object", "to_chat_body"]

_ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "text", "metadata")

_IGNORED = {"model", "metadata", "store", "user", "service_tier", "prompt_cache_key", "safety_identifier",
            "parallel_tool_calls", "truncation", "include"}
_MAPPED = {"input", "instructions", "max_output_tokens", "temperature", "top_p", "text", "top_logprobs"}
_UNSUPPORTED = {
    "tools": "tool calls are not supported (text generation only)",
    "tool_choice": "tool calls are not supported (text generation only)",
    "max_tool_calls": "tool calls are not supported (text generation only)",
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
    return chat


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise LineError("input must be a non-empty string or a list of messages", "invalid_parameter", "input")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") not in _ROLES:
            kind = item.get("type") if isinstance(item, dict) else None
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
    text = {"type": "output_text", "text": output.text, "annotations": [], "logprobs": []}
    message = {"type": "message", "id": f"msg_{response_id}", "status": "incomplete" if cut else "completed",
               "role": "assistant", "content": [text]}
    return {
        "id": f"resp_{response_id}", "object": "response", "created_at": int(time.time()), "model": model,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
        "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {}, "output": [message],
        "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
        "usage": {"input_tokens": output.num_prompt_tokens,
                  "input_tokens_details": {"cached_tokens": output.num_cached_tokens, "cache_write_tokens": 0},
                  "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": output.num_prompt_tokens + completion_tokens},
    }
