"""Engine outputs -> OpenAI response bodies, and the output and error lines of a batch's result files."""
from __future__ import annotations

import time
from typing import Any

from jobs.batch.ids import LineIds
from jobs.batch.requests import CHAT, LineError


def response_body(endpoint: str, model: str, output: Any, response_id: str) -> dict[str, Any]:
    completion_tokens = len(output.token_ids)
    usage = {
        "prompt_tokens": output.num_prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": output.num_prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": output.num_cached_tokens},
    }
    created = int(time.time())
    if endpoint == CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": output.text, "refusal": None},
            "logprobs": _chat_logprobs(output.logprobs),
            "finish_reason": output.finish_reason,
        }
        return {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": usage, "system_fingerprint": None}
    choice = {"index": 0, "text": output.text, "logprobs": _completion_logprobs(output.logprobs),
              "finish_reason": output.finish_reason}
    return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": usage}


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


def request_error_line(ids: LineIds, custom_id: str | None, error: LineError) -> dict[str, Any]:
    """A request the server refused (HTTP 400 in the online API)."""
    body = {"error": {"message": error.message, "type": "invalid_request_error", "param": error.param,
                      "code": error.code}}
    return {"id": ids.line_id, "custom_id": custom_id,
            "response": {"status_code": 400, "request_id": ids.request_id, "body": body}, "error": None}


def batch_error_line(ids: LineIds, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """A request the batch did not run to the end: cancelled, expired, or its shard failed."""
    return {"id": ids.line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
