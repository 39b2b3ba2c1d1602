"""First step of a batch: validate the input file, write shards per model, then start them.

Shards are written in the shard-input schema (jobs/batch/shard_input.py); the manifest, written last,
says the batch is prepared. One process at a time writes a batch's shards (a short Redis lock that
prepare and the deadline sweep both take), and a batch past its window before anyone prepared it is
left to the deadline sweep, which accounts for its lines (jobs/pipeline/deadlines.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from pagebatch.jobs.batch.cost import line_cost
from pagebatch.jobs.batch.lifecycle import BatchStatus, Event
from pagebatch.jobs.batch.manifest import Manifest, ShardPlan
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import BatchError, BatchErrors, BatchRecord
from pagebatch.jobs.batch.shard_input import encode_shard, new_header
from pagebatch.jobs.batch.shard_ref import ShardKind
from pagebatch.jobs.batch.validate import FileError, Limits, RejectedLine, ValidLine, check_lines, check_size
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.finalize import load_manifest, maybe_finalize
from pagebatch.jobs.pipeline.outbox import publish_best_effort as publish_outbox
from pagebatch.jobs.pipeline.plan import PrepareBusy, dispatch_undone, preparing, start_batch
from pagebatch.jobs.pipeline.webhooks import enqueue_best_effort as enqueue_webhook
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout
from pagebatch.jobs.store.quotas import QuotaExceeded
from pagebatch.jobs.store.registry import known_models
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)
__all__ = ["PrepareBusy", "fail_batch", "limits_from", "prepare_batch"]


def limits_from(svc: Services) -> Limits:
    s = svc.settings
    return Limits(s.max_batch_bytes, s.max_batch_lines, s.max_line_bytes, s.default_max_tokens)


def prepare_batch(svc: Services, batch_id: str, tenant: str, worker: str) -> None:
    record = svc.state.get_live(batch_id)
    if record is not None and record.status == BatchStatus.FAILED:
        enqueue_webhook(svc, record)  # a redelivery after a crash between failing and enqueueing: sent once
    if record is None or record.status not in (BatchStatus.VALIDATING, BatchStatus.CANCELLING,
                                               BatchStatus.IN_PROGRESS):
        return  # gone from Redis (the sweeper restores it) or already past this step
    manifest = load_manifest(svc, tenant, batch_id)
    if manifest is None:
        if record.expires_at is not None and time.time() >= record.expires_at:
            log.info("batch expired before it was prepared; the deadline sweep accounts for its lines")
            return
        with preparing(svc, batch_id) as keep_alive:
            manifest = load_manifest(svc, tenant, batch_id)  # the holder before us may have finished it
            if manifest is None:
                try:
                    manifest = _validate_and_split(svc, record, worker, keep_alive)
                except FileError as e:
                    fail_batch(svc, batch_id, tenant, e.code, e.message, e.line)
                    return
    try:
        svc.quotas.reserve_enqueued(tenant, batch_id, manifest.enqueued(), svc.settings.quota_for(tenant))
    except QuotaExceeded as e:
        fail_batch(svc, batch_id, tenant, e.code, e.message)
        return
    if start_batch(svc, record, manifest):
        log.info("batch validated", total=manifest.total, rejected=manifest.rejected, shards=len(manifest.shards))
    dispatch_undone(svc, record.id, tenant, manifest)
    maybe_finalize(svc, batch_id, tenant, redelivered=True)  # no shards at all, or a redelivered prepare


def _validate_and_split(svc: Services, record: BatchRecord, worker: str, keep_alive: Callable[[], None]) -> Manifest:
    tenant, batch_id = record.tenant, record.id
    limits = limits_from(svc)
    try:
        check_size(svc.storage.size(layout.file_content(tenant, record.input_file_id)), limits)
        lines = svc.files.lines(tenant, record.input_file_id)
        models = known_models(svc.redis, svc.storage)
        rejected = ShardResult()
        ctx = RequestContext(batch_id, tenant, worker)
        buffers: dict[str, list[ValidLine]] = {}
        manifest = Manifest(total=0, rejected=0, model=None, kind=ShardKind.of_endpoint(record.endpoint))
        for verdict in check_lines(lines, endpoint=record.endpoint, known_models=models, limits=limits,
                                   default_model=record.default_model):
            manifest.total += 1
            if manifest.total % 1000 == 0:
                keep_alive()
            if isinstance(verdict, RejectedLine):
                rejected.add_rejected(ctx, verdict)
                continue
            manifest.model = manifest.model or verdict.model
            buffer = buffers.setdefault(verdict.model, [])
            buffer.append(verdict)
            if len(buffer) >= svc.settings.shard_size:
                _write_shard(svc, record, manifest, verdict.model, buffers.pop(verdict.model))
        for model, buffer in buffers.items():
            _write_shard(svc, record, manifest, model, buffer)
    except NotFound:
        raise FileError("file_not_found", f"the input file {record.input_file_id} no longer exists") from None
    manifest.rejected = rejected.failed
    svc.storage.put_bytes(layout.prepare_result(tenant, batch_id), rejected.to_bytes())
    svc.storage.put_bytes(layout.manifest(tenant, batch_id), manifest.to_bytes())  # written last: "prepared"
    return manifest


def _write_shard(svc: Services, record: BatchRecord, manifest: Manifest, model: str, jobs: list[ValidLine]) -> None:
    index = len(manifest.shards)
    header = new_header(record.id, index, manifest.kind, len(jobs))
    svc.storage.put_bytes(layout.shard_input(record.tenant, record.id, index),
                          encode_shard(header, (job.to_shard_line() for job in jobs)))
    costs = [line_cost(job.request) for job in jobs]
    manifest.shards.append(ShardPlan(index, model, len(jobs), jobs[0].line, work=sum(c.work for c in costs),
                                     tokens=sum(c.enqueued_tokens for c in costs)))


def fail_batch(svc: Services, batch_id: str, tenant: str, code: str, message: str, line: int | None = None) -> None:
    log.info("batch failed", batch_id=batch_id, code=code, message=message)

    def attach(r: BatchRecord) -> None:
        r.errors = BatchErrors(data=[BatchError(code=code, message=message, line=line)])

    changed, failed = svc.state.transition(batch_id, Event.FAIL, attach)
    if changed:
        svc.storage.delete_prefix(layout.work_prefix(tenant, batch_id))
        svc.state.forget_active(batch_id)
        if failed is not None:
            enqueue_webhook(svc, failed)  # batch.failed: only recorded in Redis, sent by the webhooks thread
            publish_outbox(svc, failed)
