"""One shard of a batch on a worker: its requests go into the worker's shared EngineLoop.

The order is the shard contract's (docs/architecture.md): read the stored input (outages wait), refuse a
version newer than this worker knows (ShardTooNew: nothing counted, the task goes back to the queue),
count the attempt, and only then parse. An input that cannot be parsed fails the attempt; on the last
attempt allowed its lines fail with ``shard_unreadable``, so a bad shard costs a bounded number of tries,
frees its place in the fair queue, and never blocks anything else.
"""
from __future__ import annotations

import time
from typing import Protocol

import redis
import structlog

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.lifecycle import BatchStatus
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.manifest import ShardPlan
from pagebatch.jobs.batch.shard_input import (SHARD_INPUT_VERSION, SalvagedLine, ShardUnreadable, decode_shard,
                                              salvage_lines, shard_version)
from pagebatch.jobs.batch.shard_ref import ShardRef, ShardTooNew
from pagebatch.jobs.batch.validate import ValidLine
from pagebatch.jobs.engine_host import EngineHandle
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.execute import execute
from pagebatch.jobs.pipeline.finalize import finish_shard, load_manifest
from pagebatch.jobs.retry import through_outages
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)

class Liveness(Protocol):
    """How a running shard shows it is not stuck (the worker keeps its broker lease only while it is)."""

    def waiting(self) -> None:
        """Waiting out a storage or Redis outage: not stuck."""

    def polled(self) -> None:
        """Once per poll while requests run: not stuck if the engine moved since the last poll."""


class NoLiveness:
    def waiting(self) -> None:
        pass

    def polled(self) -> None:
        pass


class StopWatcher:
    """Answers "should this shard stop?" from the batch's live state: cancelled, or past its window."""

    def __init__(self, svc: Services, batch_id: str, expires_at: int | None) -> None:
        self.svc, self.batch_id, self.expires_at = svc, batch_id, expires_at

    def __call__(self) -> str | None:
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "batch_expired"
        try:
            record = self.svc.state.get_live(self.batch_id)
        except redis.RedisError:
            return None  # Redis briefly away: keep working, ask again next poll
        if record is not None and (record.cancel_requested or record.status == BatchStatus.CANCELLED):
            return "batch_cancelled"
        return None


RESULT_GRACE_S = 3600  # how long past its window a finished shard keeps trying to store its results


def run_shard(svc: Services, loop: EngineHandle, ref: ShardRef, *, model_name: str, worker: str, redelivered: bool,
              liveness: Liveness | None = None) -> None:
    """Run one shard; Redis or storage outages on the way delay it, they never fail its lines.

    ShardTooNew (a shard input of a newer version) and an unreadable input before its last attempt are
    raised for the task to retry; results already computed are stored with retries rather than recomputed.
    """
    live = liveness or NoLiveness()
    touch = live.waiting
    with structlog.contextvars.bound_contextvars(**ref.log_fields()):
        record = through_outages(lambda: svc.state.get_live(ref.batch_id), what="batch state", on_wait=touch)
        if record is None or lifecycle.is_terminal(record.status):
            log.info("shard skipped: batch not live", status=getattr(record, "status", None))
            return
        window = record.expires_at
        shards = svc.state.shards
        if through_outages(lambda: shards.is_done(ref), what="batch state", deadline=window, on_wait=touch):
            log.info("shard already done")
            through_outages(lambda: finish_shard(svc, ref, completed=0, failed=0, redelivered=True),
                            what="shard bookkeeping", deadline=window, on_wait=touch)
            return
        raw = through_outages(lambda: _read_input(svc, ref), what="shard input", deadline=window, on_wait=touch)
        if raw is not None:
            refuse_if_newer(raw)  # ShardTooNew before anything is counted: a newer worker will read it
        attempt = through_outages(lambda: shards.count_attempt(ref), what="batch state", deadline=window,
                                  on_wait=touch)
        ctx = RequestContext(ref.batch_id, ref.tenant, worker)
        started = time.monotonic()
        max_attempts = svc.settings.max_shard_attempts
        if attempt > max_attempts:
            log.error("shard failed too many times; failing its requests", attempts=attempt - 1)
            message = f"the shard was attempted {attempt - 1} times without finishing (its worker crashed)"
            result = _fail_lines(svc, ref, raw, ctx, "shard_failed", message)
        else:
            try:
                jobs = _parse(raw, ref)
            except ShardUnreadable as e:
                if attempt < max_attempts:
                    log.warning("shard input unreadable; the task retries", attempt=attempt, error=str(e))
                    raise
                log.error("shard input unreadable; failing its lines", attempts=attempt, error=str(e))
                result = _fail_lines(svc, ref, raw, ctx, "shard_unreadable",
                                     f"the batch's stored work for this request could not be read ({e}); "
                                     "submit the request again in a new batch")
            else:
                log.info("shard started", attempt=attempt, requests=len(jobs))
                result = execute(
                    loop, jobs, ctx=ctx, endpoint=record.endpoint, model_name=model_name,
                    request_prefix=f"{ref.batch_id}-{ref.index}-{attempt}",
                    should_stop=StopWatcher(svc, ref.batch_id, window),
                    # the final counts appear with the done mark, once the results are stored
                    on_progress=lambda c, f: c + f < len(jobs) and _publish_progress(svc, ref, c, f),
                    poll_s=svc.settings.poll_interval_s, fairness_key=ref.tenant, on_poll=live.polled,
                )
        # Results first, keyed by batch and shard: a re-run overwrites the same object.
        keep_until = None if window is None else window + RESULT_GRACE_S
        key = layout.shard_result(ref.tenant, ref.batch_id, ref.index)
        through_outages(lambda: svc.storage.put_bytes(key, result.to_bytes()), what="shard results",
                        deadline=keep_until, on_wait=touch)
        through_outages(lambda: finish_shard(svc, ref, completed=result.completed, failed=result.failed,
                                             redelivered=redelivered or attempt > 1),
                        what="shard bookkeeping", deadline=keep_until, on_wait=touch)
        log.info("shard done", completed=result.completed, failed=result.failed,
                 seconds=round(time.monotonic() - started, 3))


def refuse_if_newer(raw: bytes) -> None:
    """ShardTooNew for an input of a version this worker does not read (an unreadable one is not refused here)."""
    try:
        version = shard_version(raw)
    except ShardUnreadable:
        return
    if version > SHARD_INPUT_VERSION:
        raise ShardTooNew(f"shard input version {version}; this worker reads up to {SHARD_INPUT_VERSION}")


def _read_input(svc: Services, ref: ShardRef) -> bytes | None:
    """The stored input, or None when it is gone (an unreadable shard like any other)."""
    try:
        return svc.storage.get_bytes(layout.shard_input(ref.tenant, ref.batch_id, ref.index))
    except NotFound:
        return None


def _parse(raw: bytes | None, ref: ShardRef) -> list[ValidLine]:
    if raw is None:
        raise ShardUnreadable("the shard input is missing from storage")
    try:
        return [ValidLine.from_shard_line(line) for line in decode_shard(raw)]
    except (TypeError, ValueError) as e:  # a stored request the engine's types refuse
        raise ShardUnreadable(f"a stored request could not be rebuilt: {type(e).__name__}: {str(e)[:200]}") from None


def _fail_lines(svc: Services, ref: ShardRef, raw: bytes | None, ctx: RequestContext, code: str, message: str
                ) -> ShardResult:
    """Every line of the shard reported as ``code``: those the input still names, else as many as its plan says."""
    result = ShardResult()
    lines = salvage_lines(raw) if raw is not None else []
    plan = through_outages(lambda: _plan_of(svc, ref), what="batch manifest")
    if plan is not None:  # the plan knows how many lines the shard holds, whatever is left of its input
        lines = (lines + [SalvagedLine(None, None, None)] * plan.lines)[: plan.lines]
    for line in lines:
        result.add_not_run(ctx, line, code, message, line=plan.first_line if plan is not None else 0)
    return result


def _plan_of(svc: Services, ref: ShardRef) -> ShardPlan | None:
    manifest = load_manifest(svc, ref.tenant, ref.batch_id)
    if manifest is None:
        return None
    return next((p for p in manifest.shards if p.index == ref.index), None)


def _publish_progress(svc: Services, ref: ShardRef, completed: int, failed: int) -> None:
    try:
        svc.state.shards.record_progress(ref, completed, failed)
    except redis.RedisError:
        pass  # progress is advisory; the shard's final counts are recorded when it finishes
