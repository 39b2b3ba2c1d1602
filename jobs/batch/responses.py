"""Engine outputs -> OpenAI response bodies, and the output and error lines of a batch's result files."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from pagebatch.engine.outputs import RequestMetrics

from pagebatch.jobs.batch.ids import LineIds
from pagebatch.jobs.batch.line_errors import batch_error_line, request_error_line
from pagebatch.jobs.batch.responses_api import response_object
from pagebatch.jobs.batch.schema import CHAT, RESPONSES

__all__ = ["batch_error_line", "combined_output", "output_line", "request_error_line", "response_body"]


def response_body(endpoint: str, model: str, output: Any | Sequence[Any], response_id: str,
                  echo: dict[str, Any] | None = None) -> dict[str, Any]:
    """One body for a line: ``output`` is its engine output, or one per choice (``n``), in choice order.

    As OpenAI does, the usage counts the prompt once and the completion tokens of every choice.
    ``echo``: the request fields a Response repeats (``/v1/responses``).
    """
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    if endpoint == RESPONSES:
        return response_object(model, outputs[0], response_id, echo)
    first = outputs[0]
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    usage = {
        "prompt_tokens": first.num_prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": first.num_prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": first.num_cached_tokens},
    }
    created = int(time.time())
    if endpoint == CHAT:
        choices = [{
            "index": i,
            "message": {"role": "assistant", "content": o.text, "refusal": None},
            "logprobs": _chat_logprobs(o.logprobs),
            "finish_reason": o.finish_reason,
        } for i, o in enumerate(outputs)]
        return {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage, "system_fingerprint": None}
    choices = [{"index": i, "text": o.text, "logprobs": _completion_logprobs(o.logprobs), "finish_reason": o.finish_reason}
               for i, o in enumerate(outputs)]
    return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}


def combined_output(outputs: Sequence[Any]) -> Any:
    """The choices of one line as one RequestOutput-like record for the usage log (``results.usage_record``):
    the prompt counted once (choice 0's, with its cached tokens), the completion tokens of every choice, and
    timings from the first arrival, scheduling and token to the last finish. ``finish_reason`` is "length"
    when any choice was cut by it, else choice 0's."""
    if len(outputs) == 1:
        return outputs[0]
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
    return dataclasses.replace(
        first,
        token_ids=[t for o in outputs for t in o.token_ids],
        logprobs=None,
        finish_reason="length" if "length" in reasons else first.finish_reason,
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
