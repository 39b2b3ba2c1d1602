"""Engine outputs -> OpenAI response bodies, and the output and error lines of a batch's result files."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from pagebatch.engine.outputs import RequestMetrics

from pagebatch.jobs.batch.ids import LineIds, tool_call_id
from pagebatch.jobs.batch.line_errors import batch_error_line, request_error_line
from pagebatch.jobs.batch.responses_api import response_object
from pagebatch.jobs.batch.schema import CHAT, RESPONSES

__all__ = ["batch_error_line", "combined_output", "output_line", "request_error_line", "response_body"]


def response_body(endpoint: str, model: str, output: Any | Sequence[Any], response_id: str,
                  echo: dict[str, Any] | None = None, *, n: int = 1, legacy_functions: bool = False) -> dict[str, Any]:
    """One body for a line: ``output`` is its engine output, or one per choice, in choice order (``n`` choices of
    each prompt, prompt after prompt, for a list of completion prompts).

    As OpenAI does, the usage counts each prompt once and the completion tokens of every choice.
    ``echo``: the request fields a Response repeats (``/v1/responses``). ``legacy_functions``: calls are answered
    as ``message.function_call`` (the request used ``functions``), else as ``message.tool_calls``.
    """
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    if endpoint == RESPONSES:
        return response_object(model, outputs[0], response_id, echo)
    prompt_tokens, cached_tokens = prompt_usage(outputs, n)
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    created = int(time.time())
    if endpoint == CHAT:
        choices = [{
            "index": i,
            "message": _chat_message(o, response_id, i, legacy_functions),
            "logprobs": _chat_logprobs(o.logprobs),
            "finish_reason": finish_reason(o, legacy_functions),
        } for i, o in enumerate(outputs)]
        return {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage, "system_fingerprint": None}
    choices = [{"index": i, "text": o.text, "logprobs": _completion_logprobs(o.logprobs), "finish_reason": o.finish_reason}
               for i, o in enumerate(outputs)]
    return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


def finish_reason(output: Any, legacy_functions: bool = False) -> str:
    """OpenAI's finish reason of one choice: "tool_calls" (or "function_call") when its answer made calls."""
    if output.finish_reason == "stop" and getattr(output, "tool_calls", None):
        return "function_call" if legacy_functions else "tool_calls"
    return output.finish_reason


def prompt_usage(outputs: Sequence[Any], n: int = 1) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens) of a line: each prompt once (the first of its n choices)."""
    firsts = outputs[::n] if n > 0 else outputs[:1]
    return sum(o.num_prompt_tokens for o in firsts), sum(o.num_cached_tokens for o in firsts)


def _chat_message(output: Any, response_id: str, choice: int, legacy_functions: bool) -> dict[str, Any]:
    calls = output.tool_calls if output.finish_reason == "stop" else None
    if not calls:
        return {"role": "assistant", "content": output.text, "refusal": None}
    message: dict[str, Any] = {"role": "assistant", "content": output.text or None, "refusal": None}
    if legacy_functions:
        message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
    else:
        message["tool_calls"] = [{"id": tool_call_id(response_id, choice, k), "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for k, c in enumerate(calls)]
    return message


def combined_output(outputs: Sequence[Any], n: int = 1, legacy_functions: bool = False) -> Any:
    """The choices of one line as one RequestOutput-like record for the usage log (``results.usage_record``):
    each prompt counted once (with its cached tokens), the completion tokens of every choice, and timings from
    the first arrival, scheduling and token to the last finish. ``finish_reason`` is "length" when any choice was
    cut by it, else choice 0's as OpenAI names it ("tool_calls" for calls)."""
    if len(outputs) == 1:
        reason = finish_reason(outputs[0], legacy_functions)
        return outputs[0] if reason == outputs[0].finish_reason else dataclasses.replace(outputs[0], finish_reason=reason)
    first = outputs[0]
    metrics = [o.metrics for o in outputs if o.metrics is not None]
    combined = None
    if metrics:
        def earliest(name: str) -> float | None:
            values = [getattr(m, name) for m in metrics if getattr(m, name) is not None]
            return min(values) if values else None

        finished = [m.finished_time for m in metrics]
        combined = RequestMetrics(
            arrival_time=min(m.arrival_time for m in metrics),
            first_scheduled_time=earliest("first_scheduled_time"),
            first_token_time=earliest("first_token_time"),
            finished_time=None if None in finished else max(finished),
        )
    reasons = [o.finish_reason for o in outputs]
    prompt_tokens, cached_tokens = prompt_usage(outputs, n)
    return dataclasses.replace(
        first,
        token_ids=[t for o in outputs for t in o.token_ids],
        num_prompt_tokens=prompt_tokens,
        num_cached_tokens=cached_tokens,
        logprobs=None,
        finish_reason="length" if "length" in reasons else finish_reason(first, legacy_functions),
        metrics=combined,
    )


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def _chat_logprobs(logprobs: list[Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    content = [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _bytes(lp.token),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token)} for t in lp.top],
        }
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(logprobs: list[Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets, position = [], 0
    for lp in logprobs:
        offsets.append(position)
        position += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def output_line(ids: LineIds, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": ids.line_id, "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": ids.request_id, "body": body}, "error": None}
