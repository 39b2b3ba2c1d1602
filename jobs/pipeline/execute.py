"""Runs a list of validated requests on a shared EngineLoop and collects OpenAI-shaped results.

The one execution path for both a worker's shard task and ``pagebatch run``.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from typing import Any

from engine import EngineDeadError, SamplingParams

from jobs.batch.ids import LineIds
from jobs.batch.requests import CHAT, LineError
from jobs.batch.responses import batch_error_line, combined_output, output_line, request_error_line, response_body
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
    """A line with ``n`` choices is n engine requests (ids suffixed ``-c<i>`` past the first), each with its own
    seed derived from the line's (``EngineRequest.choice_params``); the line's result is one body once all are in."""
    result = ShardResult()
    stop = should_stop()
    pending: dict[cf.Future, tuple[_Line, int]] = {}
    for job in jobs:
        if stop:
            result.add_not_run(ctx, job, stop, STOP_MESSAGES[stop])
            continue
        line = _Line(job, request_prefix)
        for i, request_id in enumerate(line.request_ids):
            future = loop.submit(job.request.prompt, job.request.choice_params(i), request_id=request_id)
            pending[future] = (line, i)

    aborted = False
    next_check = time.monotonic() + poll_s
    while pending:
        done, _ = cf.wait(pending, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
        for future in done:
            line, i = pending.pop(future)
            line.futures[i] = future
            if all(f is not None for f in line.futures):
                _collect(result, ctx, line.job, line.futures, endpoint, model_name, stop)
        if time.monotonic() < next_check and pending:
            continue  # progress and the stop flag are looked at once per poll interval, not per completion
        next_check = time.monotonic() + poll_s
        if on_progress is not None:
            on_progress(result.completed, result.failed)
        if not aborted and pending:
            stop = should_stop()
            if stop:
                log.info("aborting in-flight requests", reason=stop, requests=len(pending))
                for line, i in pending.values():
                    loop.abort(line.request_ids[i])
                aborted = True
    result.stopped = stop
    return result


class _Line:
    """One line's engine requests (one per choice) and their futures as they complete."""

    def __init__(self, job: ValidLine, request_prefix: str) -> None:
        self.job = job
        base = f"{request_prefix}-{job.line}"
        n = job.request.n
        self.request_ids = [base if i == 0 else f"{base}-c{i}" for i in range(n)]
        self.futures: list[cf.Future | None] = [None] * n


def _collect(result: ShardResult, ctx: RequestContext, job: ValidLine, futures: list[cf.Future], endpoint: str,
             model_name: str, stop: str | None) -> None:
    ids = LineIds.of(ctx.batch_id, job.line)

    def usage(out: Any, finish_reason: str):  # out: the line's choices as one output (combined_output), or None
        return usage_record(ctx, job.line, job.custom_id, job.model, finish_reason, out)

    outs = []
    for future in futures:
        try:
            outs.append(future.result())
        except EngineDeadError:
            raise  # not this request's fault: the shard stops here and runs again on a live worker
        except Exception as e:  # the engine failed this request itself: report it, keep the shard going
            log.error("engine raised for a request", custom_id=job.custom_id, request_id=ids.request_id, error=repr(e))
            result.add_error(batch_error_line(ids, job.custom_id, "server_error", f"engine error: {e}"),
                             usage(None, "error"))
            return
    reasons = {out.finish_reason for out in outs}
    combined = combined_output(outs)  # usage: the prompt once, every choice's completion tokens
    if reasons <= {"stop", "length"}:
        body = response_body(endpoint, model_name, outs, ids.response_id, job.request.echo)
        result.add_output(output_line(ids, job.custom_id, body), usage(combined, combined.finish_reason))
    elif "error" in reasons:
        out = next(o for o in outs if o.finish_reason == "error")
        code = out.error_code or "invalid_request"
        error = LineError(out.error or "the request was rejected by the engine", code, _error_param(endpoint, out))
        result.add_error(request_error_line(ids, job.custom_id, error), usage(None, "error"))
    else:  # "abort": cancelled or expired while running; keep what it cost
        code = stop or "batch_cancelled"
        result.add_error(batch_error_line(ids, job.custom_id, code, STOP_MESSAGES[code]), usage(combined, "abort"))


def _error_param(endpoint: str, out: Any) -> str | None:
    """The parameter an engine rejection is about: the prompt for the context, else the one its message names."""
    if out.error_code == "context_length_exceeded":
        return "messages" if endpoint == CHAT else "prompt"
    if out.error_code == "invalid_request" and out.error:
        first = out.error.split(" ", 1)[0].rstrip(":,")
        return first if first.isidentifier() and first in SamplingParams.__dataclass_fields__ else None
    return None
