"""Deadlines that hold whether or not a worker serves the model: expiry and cancellation.

A running shard enforces its batch's window and a cancel itself (jobs/pipeline/shard.py). This
sweep covers the rest: a batch past its window, or cancelled, whose shards nobody is running (no
live worker for its model, or none for any) still ends. Shards not done get "not run" results
(``batch_expired`` / ``batch_cancelled`` for each of their lines) and the batch is finalized here,
in this process, so it needs no worker either. ``grace_s`` leaves running shards time to stop and
store what they finished first.

Every line is accounted for, whenever the batch stopped: a batch nobody prepared has its input read
here, line by line (only far enough to find each line's custom_id: the engine is not needed), and each
line is reported as not run. A shard input that cannot be parsed is read the same way. One batch that
cannot be closed is logged and left for the next pass; it never stops the others.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from pagebatch.jobs.batch.lifecycle import BatchStatus, Event
from pagebatch.jobs.batch.line_errors import STOP_MESSAGES
from pagebatch.jobs.batch.line_scan import top_level_string
from pagebatch.jobs.batch.manifest import Manifest
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.batch.shard_input import SalvagedLine, ShardUnreadable, decode_shard, salvage_lines
from pagebatch.jobs.batch.shard_ref import ShardKind, ShardTooNew
from pagebatch.jobs.errors import OUTAGE_ERRORS
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.finalize import finalize_batch, load_manifest
from pagebatch.jobs.pipeline.plan import PrepareBusy, preparing, start_batch
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)
SWEEPER = "deadline-sweep"  # the "worker" usage records of lines closed here name


def enforce_deadlines(svc: Services, grace_s: float) -> int:
    """One pass over unfinished batches; returns how many were closed."""
    now = time.time()
    closed = 0
    for batch_id, status in svc.redis.hgetall(keys.ACTIVE_BATCHES).items():
        if status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
            continue
        try:
            record = svc.state.get_live(batch_id)
            if record is None:
                continue
            if record.status == BatchStatus.CANCELLING and now >= (record.cancelling_at or now) + grace_s:
                closed += close(svc, record, "batch_cancelled")
            elif record.expires_at is not None and now >= record.expires_at + grace_s:
                closed += close(svc, record, "batch_expired")
        except OUTAGE_ERRORS:
            raise  # the store is away: the whole pass waits for the next interval
        except Exception:
            log.exception("could not close a batch past its deadline; trying again next sweep", batch_id=batch_id)
    return closed


def close(svc: Services, record: BatchRecord, code: str) -> int:
    """End ``record`` with every line not done reported as ``code``; 1 if this call ended it."""
    batch_id, tenant = record.id, record.tenant
    manifest = load_manifest(svc, tenant, batch_id)
    if manifest is None:  # never prepared: account for its lines from the input file
        try:
            with preparing(svc, batch_id) as keep_alive:
                manifest = load_manifest(svc, tenant, batch_id) or _account_unprepared(svc, record, code, keep_alive)
        except PrepareBusy:
            return 0  # prepare is writing its shards right now; the next pass sees its manifest
    if record.num_shards is None:
        start_batch(svc, record, manifest)  # prepared, its plan not recorded yet (prepare died in between)
    ctx = RequestContext(batch_id, tenant, SWEEPER)
    done = svc.state.shards.done(batch_id)
    for plan in manifest.shards:
        if plan.index in done:
            continue
        result = ShardResult(stopped=code)
        for line in _shard_lines(svc, record, manifest, plan.index, plan.lines):
            result.add_not_run(ctx, line, code, STOP_MESSAGES[code], line=plan.first_line)
        svc.storage.put_bytes(layout.shard_result(tenant, batch_id, plan.index), result.to_bytes())
        svc.state.shards.mark_done(manifest.ref(batch_id, tenant, plan), result.completed, result.failed)
    changed, _ = svc.state.transition(batch_id, Event.FINALIZE)
    if changed:
        log.info("closing a batch no worker finished", batch_id=batch_id, reason=code)
        finalize_batch(svc, batch_id, tenant)
    return int(changed)


def _account_unprepared(svc: Services, record: BatchRecord, code: str, keep_alive: Callable[[], None]) -> Manifest:
    """A batch that stopped before anyone prepared it: each non-blank line of its input becomes a ``code``
    error line (custom_id kept wherever the line has one), written where prepare's rejected lines go, with a
    manifest of no shards; the batch is then prepared, and nothing in it runs."""
    tenant, batch_id = record.tenant, record.id
    result = ShardResult(stopped=code)
    ctx = RequestContext(batch_id, tenant, SWEEPER)
    try:
        for number, raw in enumerate(svc.files.lines(tenant, record.input_file_id), start=1):
            if number % 1000 == 0:
                keep_alive()
            if raw.strip():
                custom_id = top_level_string(raw, "custom_id")
                result.add_not_run(ctx, SalvagedLine(number, custom_id, None), code, STOP_MESSAGES[code])
    except NotFound:
        pass  # the input file was deleted meanwhile: there is nothing to account for
    manifest = Manifest(total=result.failed, rejected=result.failed, model=None,
                        kind=ShardKind.of_endpoint(record.endpoint))
    svc.storage.put_bytes(layout.prepare_result(tenant, batch_id), result.to_bytes())
    svc.storage.put_bytes(layout.manifest(tenant, batch_id), manifest.to_bytes())
    log.info("batch stopped before it was prepared; its lines are reported", batch_id=batch_id, reason=code,
             lines=result.failed)
    return manifest


def _shard_lines(svc: Services, record: BatchRecord, manifest: Manifest, index: int, count: int) -> list:
    """The lines of a shard nobody ran, from its input; what can be salvaged if it cannot be parsed."""
    try:
        raw = svc.storage.get_bytes(layout.shard_input(record.tenant, record.id, index))
    except NotFound:
        return [SalvagedLine(None, None, None)] * count
    try:
        return decode_shard(raw, manifest.kind)
    except (ShardUnreadable, ShardTooNew) as e:
        log.warning("shard input unreadable while closing its batch; reporting what can be read",
                    batch_id=record.id, shard=index, error=str(e))
        lines = salvage_lines(raw)
        return (lines + [SalvagedLine(None, None, None)] * count)[:count]
