"""Deadlines that hold whether or not a worker serves the model: expiry and cancellation.

A running shard enforces its batch's window and a cancel itself (jobs/pipeline/shard.py). This
sweep covers the rest: a batch past its window, or cancelled, whose shards nobody is running (no
live worker for its model, or none for any) still ends. Shards not done get "not run" results
(``batch_expired`` / ``batch_cancelled`` for each of their lines) and the batch is finalized here,
in this process, so it needs no worker either. ``grace_s`` leaves running shards time to stop and
store what they finished first.
"""
from __future__ import annotations

import time

from pagebatch.jobs.batch.lifecycle import BatchStatus, Event
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.execute import STOP_MESSAGES
from pagebatch.jobs.pipeline.finalize import PREPARE_SHARD, finalize_batch, load_manifest
from pagebatch.jobs.pipeline.shard import read_shard_input
from pagebatch.jobs.pipeline.webhooks import enqueue as enqueue_webhook
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys, layout

log = get_logger(__name__)
SWEEPER = "deadline-sweep"  # the "worker" usage records of lines closed here name


def enforce_deadlines(svc: Services, grace_s: float) -> int:
    """One pass over unfinished batches; returns how many were closed."""
    now = time.time()
    closed = 0
    for batch_id, status in svc.redis.hgetall(keys.ACTIVE_BATCHES).items():
        if status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
            continue
        record = svc.state.get_live(batch_id)
        if record is None:
            continue
        if record.status == BatchStatus.CANCELLING and now >= (record.cancelling_at or now) + grace_s:
            closed += close(svc, record, "batch_cancelled")
        elif record.expires_at is not None and now >= record.expires_at + grace_s:
            closed += close(svc, record, "batch_expired")
    return closed


def close(svc: Services, record: BatchRecord, code: str) -> int:
    """End ``record`` with every line not done reported as ``code``; 1 if this call ended it."""
    batch_id, tenant = record.id, record.tenant
    manifest = load_manifest(svc, tenant, batch_id)
    if manifest is None:  # never prepared: nothing ran, nothing to merge
        event = Event.END_CANCELLED if code == "batch_cancelled" else Event.EXPIRE
        changed, ended = svc.state.transition(batch_id, event, lambda r: r.num_shards is None)
        if changed:
            log.info("batch closed before it was prepared", batch_id=batch_id, reason=code)
            svc.state.forget_active(batch_id)
            if ended is not None:
                enqueue_webhook(svc, ended)
        return int(changed)
    ctx = RequestContext(batch_id, tenant, SWEEPER)
    done = svc.state.done_shards(batch_id)
    for plan in manifest.shards:
        if str(plan.index) in done:
            continue
        result = ShardResult(stopped=code)
        for job in read_shard_input(svc, tenant, batch_id, plan.index):
            result.add_not_run(ctx, job, code, STOP_MESSAGES[code])
        svc.storage.put_bytes(layout.shard_result(tenant, batch_id, plan.index), result.to_bytes())
        svc.state.mark_done(batch_id, str(plan.index), result.completed, result.failed)
    if PREPARE_SHARD not in svc.state.done_shards(batch_id):
        return 0  # prepare is still recording its rejected lines; the next pass finishes the job
    changed, _ = svc.state.transition(batch_id, Event.FINALIZE)
    if changed:
        log.info("closing a batch no worker finished", batch_id=batch_id, reason=code)
        finalize_batch(svc, batch_id, tenant)
    return int(changed)
