"""Runs a list of validated requests on a shared EngineLoop and collects OpenAI-shaped results.

The one execution path for both a worker's shard task and ``pagebatch run``.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from typing import Any

from engine import EngineDeadError

from jobs.batch.ids import LineIds
from jobs.batch.requests import LineError
from jobs.batch.responses import batch_error_line, output_line, request_error_line, response_body
from jobs.batch.results import RequestContext, ShardResult, usage_record
from jobs.batch.validate import ValidLine
from jobs.engine_host import EngineHandle
from jobs.logs import get_logger

log = get_logger(__name__)

STOP_MESSAGES = {
    "batch_cancelled": "The batch was cancelled before this request finished.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}

StopCheck = Callable[[], str | None]  # returns a stop code ("batch_cancelled" / "batch_expired") or None
Progress = Callable[[int, int], None]  # (completed, failed) so far


def execute(
    loop: EngineHandle,
    jobs: list[ValidLine],
    *,
    ctx: RequestContext,
    endpoint: str,
    model_name: str,
    request_prefix: str,
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
        future = loop.submit(job.request.prompt, job.request.params, request_id=f"{request_prefix}-{job.line}")
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


def _collect(result: ShardResult, ctx: RequestContext, job: ValidLine, future: cf.Future, endpoint: str,
             model_name: str, stop: str | None) -> None:
    ids = LineIds.of(ctx.batch_id, job.line)

    def usage(out: Any, finish_reason: str):
        return usage_record(ctx, job.line, job.custom_id, job.model, finish_reason, out)

    try:
        out = future.result()
    except EngineDeadError:
        raise  # not this request's fault: the shard stops here and runs again on a live worker
    except Exception as e:  # the engine failed this request itself: report it, keep the shard going
        log.error("engine raised for a request", custom_id=job.custom_id, request_id=ids.request_id, error=repr(e))
        result.add_error(batch_error_line(ids, job.custom_id, "server_error", f"engine error: {e}"),
                         usage(None, "error"))
        return
    if out.finish_reason in ("stop", "length"):
        body = response_body(endpoint, model_name, out, ids.response_id)
        result.add_output(output_line(ids, job.custom_id, body), usage(out, out.finish_reason))
    elif out.finish_reason == "error":
        error = LineError(out.error or "the request was rejected by the engine", out.error_code or "invalid_request")
        result.add_error(request_error_line(ids, job.custom_id, error), usage(None, "error"))
    else:  # "abort": cancelled or expired while running; keep what it cost
        code = stop or "batch_cancelled"
        result.add_error(batch_error_line(ids, job.custom_id, code, STOP_MESSAGES[code]), usage(out, "abort"))
