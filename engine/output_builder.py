"""Builds the RequestOutput of a finished request: its text, its logprobs with their token strings, or the
vector of an embedding request."""
from __future__ import annotations

import time

from pagebatch.engine.outputs import RequestMetrics, RequestOutput, TokenLogprob, TopLogprob
from pagebatch.engine.scheduler import FinishedRequest


class OutputBuilder:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def finished(self, done: FinishedRequest) -> RequestOutput:
        req = done.request
        if req.pooling is not None:
            return self._pooled(done)
        if req.detokenizer is not None:
            text = req.detokenizer.text
        elif req.grammar_state is not None:  # the bytes its grammar matched, exactly
            text = req.grammar_state.text(req.output_token_ids)
        else:
            text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=req.params.skip_special_tokens)
        tool_calls = None
        if req.tool_format is not None and done.reason == "stop":
            parsed = req.tool_format.parse(req.output_token_ids, req.grammar_state.token_bytes)
            if parsed is not None:
                text, tool_calls = parsed
        logprobs = None
        if req.logprobs is not None:
            logprobs = [
                TokenLogprob(token, self._piece(token), lp, [TopLogprob(t, self._piece(t), v) for t, v in top])
                for token, (lp, top) in zip(req.output_token_ids, req.logprobs)
            ]
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            token_ids=req.output_token_ids,
            text=text,
            finish_reason=done.reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens or 0,
            logprobs=logprobs,
            error=done.error,
            error_code=done.error_code,
            metrics=req.metrics,
            tool_calls=tool_calls,
        )

    @staticmethod
    def _pooled(done: FinishedRequest) -> RequestOutput:
        req = done.request
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            token_ids=[],
            text="",
            finish_reason=done.reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_cached_tokens=req.num_cached_tokens or 0,
            error=done.error,
            error_code=done.error_code,
            metrics=req.metrics,
            embedding=req.pooling.result() if done.reason == "stop" else None,
        )

    @staticmethod
    def rejected(
        request_id: str, error: str, error_code: str, prompt_token_ids: list[int] | None = None,
        wants_logprobs: bool = False, arrival_time: float | None = None,
    ) -> RequestOutput:
        """The output of a request that never ran (rejected, or failed before it reached the scheduler)."""
        now = time.time()
        ids = prompt_token_ids or []
        return RequestOutput(
            request_id=request_id,
            prompt_token_ids=ids,
            token_ids=[],
            text="",
            finish_reason="error",
            num_prompt_tokens=len(ids),
            num_cached_tokens=0,
            logprobs=[] if wants_logprobs else None,
            error=error,
            error_code=error_code,
            metrics=RequestMetrics(arrival_time=arrival_time or now, finished_time=now),
        )

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)
