"""Last step of a batch: merge shard results into the output, error and usage files, exactly once."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from jobs import layout
from jobs.ids import derived_file_id
from jobs.logs import get_logger
from jobs.outbox import publish as publish_outbox
from jobs.prepare import load_manifest
from jobs.results import ShardResult, merge_results
from jobs.schema import TERMINAL_STATUSES, BatchRecord
from jobs.services import Services
from jobs.storage import NotFound

log = get_logger(__name__)


def shard_results(svc: Services, tenant: str, batch_id: str, num_shards: int) -> Iterator[ShardResult]:
    yield ShardResult.from_bytes(svc.storage.get_bytes(layout.prepare_result(tenant, batch_id)))
    for shard in range(num_shards):
        yield ShardResult.from_bytes(svc.storage.get_bytes(layout.shard_result(tenant, batch_id, shard)))


def finalize_batch(svc: Services, batch_id: str, tenant: str) -> None:
    record = svc.state.get_live(batch_id)
    if record is None or record.status != "finalizing":
        if record is not None and record.status in TERMINAL_STATUSES:
            publish_outbox(svc, record, only_if_missing=True)  # a retry after the outbox copy failed
        return  # lost from Redis (the sweeper restores it) or finalized already
    manifest = load_manifest(svc, tenant, batch_id)
    num_shards = len(manifest.shards) if manifest else 0
    with tempfile.TemporaryDirectory(prefix="pagebatch-finalize-") as tmp:
        paths = {kind: Path(tmp) / f"{kind}.jsonl" for kind in ("output", "errors", "usage")}
        try:
            with (paths["output"].open("w", encoding="utf-8") as output,
                  paths["errors"].open("w", encoding="utf-8") as errors,
                  paths["usage"].open("w", encoding="utf-8") as usage):
                merged = merge_results(shard_results(svc, tenant, batch_id, num_shards), output, errors, usage)
        except NotFound:
            if (svc.state.get_live(batch_id) or record).status != "finalizing":
                return  # another finalize finished first and cleaned up
            raise
        ids = {kind: _store(svc, record, kind, path) for kind, path in paths.items()}

    final = "cancelled" if record.cancel_requested else "expired" if merged.expired else "completed"

    def conclude(r: BatchRecord) -> None:
        r.request_counts.completed, r.request_counts.failed = merged.completed, merged.failed
        r.usage = merged.totals.as_batch_usage()
        r.output_file_id, r.error_file_id, r.usage_file_id = ids["output"], ids["errors"], ids["usage"]

    changed, finished = svc.state.transition(batch_id, {"finalizing"}, final, conclude)
    if changed:
        log.info("batch finished", batch_id=batch_id, status=final, completed=merged.completed, failed=merged.failed)
        svc.state.forget_active(batch_id)
        svc.storage.delete_prefix(layout.work_prefix(tenant, batch_id))
        if finished is not None:
            publish_outbox(svc, finished)


def _store(svc: Services, record: BatchRecord, kind: str, path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as f:
        stored = svc.files.create(record.tenant, f"{record.id}_{kind}.jsonl", "batch_output", f, size,
                                  file_id=derived_file_id(record.id, kind))
    return stored.id
