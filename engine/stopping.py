"""When a request is done: the finish reason a newly appended token gives it, if any."""
from __future__ import annotations

from engine.outputs import FinishReason
from engine.request import Request


def stop_reason(req: Request, token: int, eos_token_ids: set[int], max_model_len: int | None) -> FinishReason | None:
    """``token`` has just been appended to ``req``; a label (choices) ends at its last token, whatever max_tokens says."""
    p = req.params
    if req.choice_state is not None:
        if req.choice_state.advance(token):
            return "stop"
    elif (not p.ignore_eos and token in eos_token_ids) or token in p.stop_token_ids:
        return "stop"
    elif req.detokenizer is not None and req.detokenizer.add(token) is not None:
        return "stop"
    elif req.num_output_tokens >= p.max_tokens:
        return "length"
    if max_model_len is not None and req.num_tokens >= max_model_len:
        return "length"
    return None
