"""One shard of a batch on a worker: its requests go into the worker's shared EngineLoop."""
from __future__ import annotations

import time
from typing import Any

import redis
import structlog

from jobs import layout
from jobs.execute import execute
from jobs.logs import get_logger
from jobs.progress import finish_shard
from jobs.results import RequestContext, ShardResult
from jobs.schema import TERMINAL_STATUSES
from jobs.services import Services
from jobs.validate import ValidLine

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
        if record is not None and (record.cancel_requested or record.status == "cancelled"):
            return "batch_cancelled"
        return None


def run_shard(svc: Services, loop: Any, *, batch_id: str, tenant: str, shard: int, model_name: str, worker: str,
              redelivered: bool) -> None:
    with structlog.contextvars.bound_contextvars(batch_id=batch_id, shard=shard):
        record = svc.state.get_live(batch_id)
        if record is None or record.status in TERMINAL_STATUSES:
            log.info("shard skipped: batch not live", status=getattr(record, "status", None))
            return
        key = str(shard)
        if svc.state.is_done(batch_id, key):
            log.info("shard already done")
            finish_shard(svc, batch_id, tenant, key, completed=0, failed=0, redelivered=True)
            return
        attempt = svc.state.count_attempt(batch_id, key)
        raw = svc.storage.get_bytes(layout.shard_input(tenant, batch_id, shard)).decode()
        jobs = [ValidLine.from_json(line) for line in raw.splitlines() if line]
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
                request_prefix=f"{batch_id}-{shard}-{attempt}", default_max_tokens=svc.settings.default_max_tokens,
                should_stop=StopWatcher(svc, batch_id, record.expires_at),
                on_progress=lambda c, f: _publish_progress(svc, batch_id, key, c, f),
                poll_s=svc.settings.poll_interval_s,
            )
        # Results first, keyed by batch and shard: a re-run overwrites the same object.
        svc.storage.put_bytes(layout.shard_result(tenant, batch_id, shard), result.to_bytes())
        finish_shard(svc, batch_id, tenant, key, completed=result.completed, failed=result.failed,
                     redelivered=redelivered or attempt > 1)
        log.info("shard done", completed=result.completed, failed=result.failed,
                 seconds=round(time.monotonic() - started, 3))


def _publish_progress(svc: Services, batch_id: str, shard: str, completed: int, failed: int) -> None:
    try:
        svc.state.set_progress(batch_id, shard, completed, failed)
    except redis.RedisError:
        pass  # progress is advisory; the shard's final counts are recorded when it finishes
