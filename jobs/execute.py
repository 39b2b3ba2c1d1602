"""Runs a list of validated requests on a shared EngineLoop and collects OpenAI-shaped results.

The one execution path for both a worker's shard task and ``pagebatch run``.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from typing import Any

from jobs.logs import get_logger
from jobs.openai_format import (
    LineError,
    batch_error_line,
    output_line,
    request_error_line,
    response_body,
    stable_id,
    to_engine_request,
)
from jobs.results import RequestContext, ShardResult
from jobs.schema import UsageRecord
from jobs.validate import ValidLine

log = get_logger(__name__)

STOP_MESSAGES = {
    "batch_cancelled": "The batch was cancelled before this request finished.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}

StopCheck = Callable[[], str | None]  # returns a stop code ("batch_cancelled" / "batch_expired") or None
Progress = Callable[[int, int], None]  # (completed, failed) so far


def execute(
    loop: Any,
    jobs: list[ValidLine],
    *,
    ctx: RequestContext,
    endpoint: str,
    model_name: str,
    request_prefix: str,
    default_max_tokens: int,
    should_stop: StopCheck = lambda: None,
    on_progress: Progress | None = None,
    poll_s: float = 0.5,
) -> ShardResult:
    result = ShardResult()
    stop = should_stop()
    pending: dict[cf.Future, ValidLine] = {}
    for job in jobs:
        if stop:
            result.add_not_run(ctx, job, stop, STOP_MESSAGES[stop])
            continue
        try:
            request = to_engine_request(endpoint, job.body, default_max_tokens)
        except LineError as e:  # validated already; kept so a rule change cannot crash a shard
            result.add_error(request_error_line(_line_id(ctx, job), job.custom_id, _req_id(ctx, job), e),
                             _usage(ctx, job, None, "error"))
            continue
        future = loop.submit(request.prompt, request.params, request_id=f"{request_prefix}-{job.line}")
        pending[future] = job

    aborted = False
    next_check = time.monotonic() + poll_s
    while pending:
        done, _ = cf.wait(pending, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
        for future in done:
            job = pending.pop(future)
            _collect(result, ctx, job, future, endpoint, model_name, stop)
        if time.monotonic() < next_check and pending:
            continue  # progress and the stop flag are looked at once per poll interval, not per completion
        next_check = time.monotonic() + poll_s
        if on_progress is not None:
            on_progress(result.completed, result.failed)
        if not aborted and pending:
            stop = should_stop()
            if stop:
                log.info("aborting in-flight requests", reason=stop, requests=len(pending))
                for job in pending.values():
                    loop.abort(f"{request_prefix}-{job.line}")
                aborted = True
    result.stopped = stop
    return result


def _line_id(ctx: RequestContext, job: ValidLine) -> str:
    return stable_id("batch_req_", ctx.batch_id, job.line)


def _req_id(ctx: RequestContext, job: ValidLine) -> str:
    return stable_id("req_", ctx.batch_id, job.line)


def _collect(result: ShardResult, ctx: RequestContext, job: ValidLine, future: cf.Future, endpoint: str,
             model_name: str, stop: str | None) -> None:
    try:
        out = future.result()
    except Exception as e:  # the engine failed this request itself: report it, keep the shard going
        log.error("engine raised for a request", custom_id=job.custom_id, request_id=_req_id(ctx, job),
                  error=repr(e))
        result.add_error(batch_error_line(_line_id(ctx, job), job.custom_id, "server_error", f"engine error: {e}"),
                         _usage(ctx, job, None, "error"))
        return
    if out.finish_reason in ("stop", "length"):
        body = response_body(endpoint, model_name, out, stable_id("", ctx.batch_id, job.line))
        result.add_output(output_line(_line_id(ctx, job), job.custom_id, _req_id(ctx, job), body),
                          _usage(ctx, job, out, out.finish_reason))
    elif out.finish_reason == "error":
        error = LineError(out.error or "the request was rejected by the engine", out.error_code or "invalid_request")
        result.add_error(request_error_line(_line_id(ctx, job), job.custom_id, _req_id(ctx, job), error),
                         _usage(ctx, job, None, "error"))
    else:  # "abort": cancelled or expired while running; keep what it cost
        code = stop or "batch_cancelled"
        result.add_error(batch_error_line(_line_id(ctx, job), job.custom_id, code, STOP_MESSAGES[code]),
                         _usage(ctx, job, out, "abort"))


def _usage(ctx: RequestContext, job: ValidLine, out: Any, finish_reason: str) -> UsageRecord:
    record = UsageRecord(batch_id=ctx.batch_id, tenant=ctx.tenant, custom_id=job.custom_id, model=job.model,
                         finish_reason=finish_reason, worker=ctx.worker, line=job.line)
    if out is None:
        return record
    metrics = out.metrics
    scheduled = metrics is None or metrics.first_scheduled_time is not None
    record.prompt_tokens = out.num_prompt_tokens if scheduled else 0
    record.cached_tokens = min(out.num_cached_tokens, record.prompt_tokens)
    record.completion_tokens = len(out.token_ids)
    if metrics is not None:
        record.queue_time = _round(metrics.queue_time)
        record.time_to_first_token = _round(metrics.time_to_first_token)
        record.total_time = _round(metrics.total_time)
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
