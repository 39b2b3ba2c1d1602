"""First step of a batch: validate the input file, write shards per model, then start them."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from jobs import layout
from jobs.logs import get_logger
from jobs.outbox import publish_best_effort as publish_outbox
from jobs.progress import PREPARE_SHARD, finish_shard
from jobs.results import RequestContext, ShardResult
from jobs.schema import BatchError, BatchErrors, BatchRecord
from jobs.services import Services
from jobs.state import known_models
from jobs.storage import NotFound
from jobs.validate import (
    FileError,
    Limits,
    RejectedLine,
    ValidLine,
    check_lines,
    check_size,
)

log = get_logger(__name__)


@dataclass
class ShardPlan:
    index: int
    model: str
    lines: int


@dataclass
class Manifest:
    total: int
    rejected: int
    model: str | None
    shards: list[ShardPlan] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        data = json.loads(raw)
        return cls(total=data["total"], rejected=data["rejected"], model=data["model"],
                   shards=[ShardPlan(**s) for s in data["shards"]])


def limits_from(svc: Services) -> Limits:
    s = svc.settings
    return Limits(s.max_batch_bytes, s.max_batch_lines, s.max_line_bytes, s.default_max_tokens)


def load_manifest(svc: Services, tenant: str, batch_id: str) -> Manifest | None:
    try:
        return Manifest.from_bytes(svc.storage.get_bytes(layout.manifest(tenant, batch_id)))
    except NotFound:
        return None


def prepare_batch(svc: Services, batch_id: str, tenant: str, worker: str) -> None:
    record = svc.state.get_live(batch_id)
    if record is None or record.status not in ("validating", "cancelling", "in_progress"):
        return  # gone from Redis (the sweeper restores it) or already past this step
    manifest = load_manifest(svc, tenant, batch_id)
    if manifest is None:
        try:
            manifest = _validate_and_split(svc, record, worker)
        except FileError as e:
            fail_batch(svc, batch_id, tenant, e.code, e.message, e.line)
            return

    def start(r: BatchRecord) -> bool:
        if r.num_shards is not None:
            return False  # a redelivered prepare: the plan is recorded already
        r.num_shards, r.request_counts.total, r.model = len(manifest.shards), manifest.total, manifest.model
        if r.status == "validating":  # a batch cancelled while validating stays cancelling
            r.status, r.in_progress_at = "in_progress", int(time.time())
        return True

    svc.state.update(batch_id, start)
    log.info("batch validated", total=manifest.total, rejected=manifest.rejected, shards=len(manifest.shards))
    for plan in manifest.shards:
        if not svc.state.is_done(batch_id, str(plan.index)):
            svc.dispatch.shard(batch_id, tenant, plan.index, plan.model)
    finish_shard(svc, batch_id, tenant, PREPARE_SHARD, completed=0, failed=manifest.rejected)


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
    manifest.shards.append(ShardPlan(index, model, len(jobs)))


def fail_batch(svc: Services, batch_id: str, tenant: str, code: str, message: str, line: int | None = None) -> None:
    log.info("batch failed", batch_id=batch_id, code=code, message=message)

    def attach(r: BatchRecord) -> None:
        r.errors = BatchErrors(data=[BatchError(code=code, message=message, line=line)])

    changed, failed = svc.state.transition(batch_id, {"validating", "cancelling"}, "failed", attach)
    if changed:
        svc.storage.delete_prefix(layout.work_prefix(tenant, batch_id))
        svc.state.forget_active(batch_id)
        if failed is not None:
            publish_outbox(svc, failed)
