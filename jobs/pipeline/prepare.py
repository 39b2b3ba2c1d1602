"""First step of a batch: validate the input file, write shards per model, then start them."""
from __future__ import annotations

from pagebatch.jobs.batch.lifecycle import BatchStatus, Event
from pagebatch.jobs.batch.manifest import Manifest, ShardPlan
from pagebatch.jobs.batch.results import RequestContext, ShardResult
from pagebatch.jobs.batch.schema import BatchError, BatchErrors, BatchRecord
from pagebatch.jobs.batch.validate import FileError, Limits, RejectedLine, ValidLine, check_lines, check_size
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.finalize import PREPARE_SHARD, finish_shard, load_manifest
from pagebatch.jobs.pipeline.outbox import publish_best_effort as publish_outbox
from pagebatch.jobs.pipeline.webhooks import enqueue_best_effort as enqueue_webhook
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout
from pagebatch.jobs.store.registry import known_models
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)


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
        try:
            manifest = _validate_and_split(svc, record, worker)
        except FileError as e:
            fail_batch(svc, batch_id, tenant, e.code, e.message, e.line)
            return

    def record_plan(r: BatchRecord) -> bool:
        if r.num_shards is not None:
            return False  # a redelivered prepare: the plan is recorded already
        r.num_shards, r.request_counts.total, r.model = len(manifest.shards), manifest.total, manifest.model
        return True

    svc.state.transition(batch_id, Event.START, record_plan)
    log.info("batch validated", total=manifest.total, rejected=manifest.rejected, shards=len(manifest.shards))
    dispatch_undone(svc, batch_id, tenant, manifest)
    finish_shard(svc, batch_id, tenant, PREPARE_SHARD, completed=0, failed=manifest.rejected)


def dispatch_undone(svc: Services, batch_id: str, tenant: str, manifest: Manifest, done: set[str] | None = None
                    ) -> None:
    """Queue every shard not done yet (a redelivery queues nothing twice: the fair queue dedupes)."""
    done = svc.state.done_shards(batch_id) if done is None else done
    for model in dict.fromkeys(plan.model for plan in manifest.shards):
        svc.dispatch.shards(batch_id, tenant, model, [(p.index, p.lines) for p in manifest.shards
                                                      if p.model == model and str(p.index) not in done])


def _validate_and_split(svc: Services, record: BatchRecord, worker: str) -> Manifest:
    tenant, batch_id = record.tenant, record.id
    limits = limits_from(svc)
    try:
        check_size(svc.storage.size(layout.file_content(tenant, record.input_file_id)), limits)
        lines = svc.files.lines(tenant, record.input_file_id)
        models = known_models(svc.redis)
        rejected = ShardResult()
        ctx = RequestContext(batch_id, tenant, worker)
        buffers: dict[str, list[ValidLine]] = {}
        manifest = Manifest(total=0, rejected=0, model=None)
        for verdict in check_lines(lines, endpoint=record.endpoint, known_models=models, limits=limits,
                                   default_model=record.default_model):
            manifest.total += 1
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
    data = "\n".join(job.to_json() for job in jobs).encode()
    svc.storage.put_bytes(layout.shard_input(record.tenant, record.id, index), data)
    manifest.shards.append(ShardPlan(index, model, len(jobs), jobs[0].line))


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
