"""One shard of a batch on a worker: its requests go into the worker's shared EngineLoop."""
from __future__ import annotations

import time

import redis
import structlog

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.lifecycle import BatchStatus
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.validate import ValidLine
from pagebatch.jobs.engine_host import EngineHandle
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.execute import execute
from pagebatch.jobs.pipeline.finalize import finish_shard
from pagebatch.jobs.retry import through_outages
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout

log = get_logger(__name__)


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


def run_shard(svc: Services, loop: EngineHandle, *, batch_id: str, tenant: str, shard: int, model_name: str, worker: str,
              redelivered: bool) -> None:
    """Run one shard; Redis or storage outages on the way delay it, they never fail its lines.

    An attempt is counted only once the shard's input is read, and results already computed are
    stored with retries rather than recomputed.
    """
    with structlog.contextvars.bound_contextvars(batch_id=batch_id, shard=shard):
        record = through_outages(lambda: svc.state.get_live(batch_id), what="batch state")
        if record is None or lifecycle.is_terminal(record.status):
            log.info("shard skipped: batch not live", status=getattr(record, "status", None))
            return
        key = str(shard)
        window = record.expires_at
        if through_outages(lambda: svc.state.is_done(batch_id, key), what="batch state", deadline=window):
            log.info("shard already done")
            through_outages(lambda: finish_shard(svc, batch_id, tenant, key, completed=0, failed=0, redelivered=True),
                            what="shard bookkeeping", deadline=window)
            return
        jobs = through_outages(lambda: read_shard_input(svc, tenant, batch_id, shard), what="shard input", deadline=window)
        attempt = through_outages(lambda: svc.state.count_attempt(batch_id, key), what="batch state", deadline=window)
        ctx = RequestContext(batch_id, tenant, worker)
        started = time.monotonic()
        if attempt > svc.settings.max_shard_attempts:
            log.error("shard failed too many times; failing its requests", attempts=attempt - 1)
            result = ShardResult()
            message = f"the shard was attempted {attempt - 1} times without finishing (its worker crashed)"
            for job in jobs:
                result.add_not_run(ctx, job, "shard_failed", message)
        else:
            log.info("shard started", attempt=attempt, requests=len(jobs))
            result = execute(
                loop, jobs, ctx=ctx, endpoint=record.endpoint, model_name=model_name,
                request_prefix=f"{batch_id}-{shard}-{attempt}", should_stop=StopWatcher(svc, batch_id, window),
                on_progress=lambda c, f: _publish_progress(svc, batch_id, key, c, f),
                poll_s=svc.settings.poll_interval_s,
            )
        # Results first, keyed by batch and shard: a re-run overwrites the same object.
        keep_until = None if window is None else window + RESULT_GRACE_S
        through_outages(lambda: svc.storage.put_bytes(layout.shard_result(tenant, batch_id, shard), result.to_bytes()),
                        what="shard results", deadline=keep_until)
        through_outages(lambda: finish_shard(svc, batch_id, tenant, key, completed=result.completed,
                                             failed=result.failed, redelivered=redelivered or attempt > 1),
                        what="shard bookkeeping", deadline=keep_until)
        log.info("shard done", completed=result.completed, failed=result.failed,
                 seconds=round(time.monotonic() - started, 3))


def read_shard_input(svc: Services, tenant: str, batch_id: str, shard: int) -> list[ValidLine]:
    raw = svc.storage.get_bytes(layout.shard_input(tenant, batch_id, shard)).decode()
    return [ValidLine.from_json(line) for line in raw.split("\n") if line]


def _publish_progress(svc: Services, batch_id: str, shard: str, completed: int, failed: int) -> None:
    try:
        svc.state.set_progress(batch_id, shard, completed, failed)
    except redis.RedisError:
        pass  # progress is advisory; the shard's final counts are recorded when it finishes
