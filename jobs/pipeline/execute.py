"""Runs a list of validated requests on a shared EngineLoop and collects OpenAI-shaped results.

The one execution path for both a worker's shard task and ``pagebatch run``.
"""
from __future__ import annotations

import concurrent.futures as cf
import queue
import time
from collections.abc import Callable, Iterable
from typing import Any

from pagebatch.engine.loop import EngineDeadError
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.stopping import GRAMMAR_ERROR

from pagebatch.jobs.batch.embeddings import EMBEDDINGS, embedding_error, embeddings_body, embeddings_usage
from pagebatch.jobs.batch.ids import LineIds
from pagebatch.jobs.batch.line_errors import STOP_MESSAGES
from pagebatch.jobs.batch.requests import CHAT, LineError
from pagebatch.jobs.batch.responses import batch_error_line, combined_output, output_line, request_error_line, response_body
from pagebatch.jobs.batch.results import RequestContext, ShardResult, usage_record
from pagebatch.jobs.batch.validate import ValidLine
from pagebatch.jobs.engine_host import EngineHandle
from pagebatch.jobs.logs import get_logger

log = get_logger(__name__)

StopCheck = Callable[[], str | None]  # returns a stop code ("batch_cancelled" / "batch_expired") or None
Progress = Callable[[int, int], None]  # (completed, failed) so far


def execute(
    loop: EngineHandle,
    jobs: Iterable[ValidLine],
    *,
    ctx: RequestContext,
    endpoint: str,
    model_name: str,
    request_prefix: str,
    should_stop: StopCheck = lambda: None,
    on_progress: Progress | None = None,
    poll_s: float = 0.5,
    window: int | None = None,
    result: ShardResult | None = None,
    fairness_key: str = "",
    on_poll: Callable[[], None] | None = None,
) -> ShardResult:
    """A line with ``n`` choices is n engine requests (ids suffixed ``-c<i>`` past the first), each with its own
    seed derived from the line's (``EngineRequest.choice_params``); an embeddings line is one engine request per
    input. The line's result is one body once all are in.

    With a ``window``, at most about that many engine requests are in flight: the next lines are prepared
    (templated, tokenized) on this thread as earlier ones finish, so a file of any size costs the engine a
    bounded queue and its preparation overlaps generation.

    ``result``: where the lines go as they finish (default: a new ShardResult); ``pagebatch run`` passes one that
    also writes each finished line to its journal. ``fairness_key`` (the tenant) is what the engine shares its
    waiting queue fairly between; ``on_poll`` is called once per poll interval while requests are in flight, and
    after each line is submitted."""
    result = ShardResult() if result is None else result
    finished: queue.SimpleQueue[tuple[_Line, int, cf.Future]] = queue.SimpleQueue()
    in_flight: dict[str, tuple[_Line, int]] = {}
    todo = iter(jobs)
    stop = should_stop()

    def submit_more() -> None:
        while not stop and (window is None or len(in_flight) < window):
            job = next(todo, None)
            if job is None:
                return
            line = _Line(job, request_prefix)
            for i, (request_id, (prompt, params)) in enumerate(zip(line.request_ids, line.calls)):
                in_flight[request_id] = (line, i)
                future = loop.submit(prompt, params, request_id=request_id, fairness_key=fairness_key)
                future.add_done_callback(lambda f, line=line, i=i: finished.put((line, i, f)))
            if on_poll is not None:
                on_poll()  # preparing a long shard's requests takes a while too

    submit_more()
    aborted = False
    next_check = time.monotonic() + poll_s
    while in_flight:
        try:
            line, i, future = finished.get(timeout=max(0.0, next_check - time.monotonic()))
        except queue.Empty:
            pass
        else:
            del in_flight[line.request_ids[i]]
            line.futures[i] = future
            if all(f is not None for f in line.futures):
                _collect(result, ctx, line.job, line.futures, endpoint, model_name, stop)
            submit_more()
        if time.monotonic() < next_check and in_flight:
            continue  # progress and the stop flag are looked at once per poll interval, not per completion
        next_check = time.monotonic() + poll_s
        if on_progress is not None:
            on_progress(result.completed, result.failed)
        if on_poll is not None:
            on_poll()
        if not aborted and in_flight:
            stop = should_stop()
            if stop:
                log.info("aborting in-flight requests", reason=stop, requests=len(in_flight))
                for request_id in list(in_flight):
                    loop.abort(request_id)
                aborted = True
    for job in todo:  # lines never submitted: the batch stopped first
        result.add_not_run(ctx, job, stop, STOP_MESSAGES[stop])
    result.stopped = stop
    return result


class _Line:
    """One line's engine requests (one per choice, or per embeddings input) and their futures as they complete."""

    def __init__(self, job: ValidLine, request_prefix: str) -> None:
        self.job = job
        base = f"{request_prefix}-{job.line}"
        self.calls = job.request.calls()  # (prompt, params) of each engine request
        n = len(self.calls)
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
    embedding = endpoint == EMBEDDINGS
    # usage: the prompt once and every choice's completion tokens; or every embedded input's prompt
    request = job.request
    combined = embeddings_usage(outs) if embedding else combined_output(outs, request.n, request.legacy_functions)
    if reasons <= {"stop", "length"}:
        if embedding:
            body = embeddings_body(model_name, outs, request.encoding_format)
        else:
            body = response_body(endpoint, model_name, outs, ids.response_id, request.echo, n=request.n,
                                 legacy_functions=request.legacy_functions)
        result.add_output(output_line(ids, job.custom_id, body), usage(combined, combined.finish_reason))
    elif "error" in reasons:
        error = embedding_error(outs) if embedding else _line_error(endpoint, outs)
        result.add_error(request_error_line(ids, job.custom_id, error), usage(None, "error"))
    else:  # "abort": cancelled or expired while running; keep what it cost
        code = stop or "batch_cancelled"
        result.add_error(batch_error_line(ids, job.custom_id, code, STOP_MESSAGES[code]), usage(combined, "abort"))


def _line_error(endpoint: str, outs: list[Any]) -> LineError:
    out = next(o for o in outs if o.finish_reason == "error")
    code = out.error_code or "invalid_request"
    return LineError(out.error or "the request was rejected by the engine", code, _error_param(endpoint, out))


def _error_param(endpoint: str, out: Any) -> str | None:
    """The parameter an engine rejection is about: the prompt for the context, else the one its message names."""
    if out.error_code == "context_length_exceeded":
        return "messages" if endpoint == CHAT else "prompt"
    if out.error_code in ("invalid_request", GRAMMAR_ERROR) and out.error:
        first = out.error.split(" ", 1)[0].rstrip(":,")
        named = out.error_code == GRAMMAR_ERROR or first in SamplingParams.__dataclass_fields__
        return first if first.isidentifier() and named else None  # a grammar error names the constraint's parameter
    return None
