"""Copies a finished S3-triggered batch next to its input: ``s3://bucket/PARENT/outbox/NAME/``.

``output.jsonl``, ``errors.jsonl`` and ``usage.jsonl`` (empty when the batch has none) and then
``batch.json``, last, so a pipeline that sees batch.json finds the other three complete.
"""
from __future__ import annotations

import json
import tempfile

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.storage import bucket_storage, parse_s3_url

log = get_logger(__name__)
_FILES = (("output_file_id", "output.jsonl"), ("error_file_id", "errors.jsonl"), ("usage_file_id", "usage.jsonl"))
_SPOOL_BYTES = 8 * 1024 * 1024


def publish(svc: Services, record: BatchRecord, *, only_if_missing: bool = False) -> bool:
    """Write the outbox of a finished triggered batch (idempotent); False when there is nothing to do."""
    if not record.outbox or not lifecycle.is_terminal(record.status):
        return False
    bucket, prefix = parse_s3_url(record.outbox)
    target = bucket_storage(bucket)
    if only_if_missing and target.exists(prefix + "batch.json"):
        return False
    for field, name in _FILES:
        file_id = getattr(record, field)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            if file_id is not None:
                for chunk in svc.files.content(record.tenant, file_id):
                    spool.write(chunk)
            spool.seek(0)
            target.put_fileobj(prefix + name, spool)
    target.put_bytes(prefix + "batch.json", (json.dumps(record.public(), indent=2) + "\n").encode())
    log.info("outbox written", batch_id=record.id, outbox=record.outbox, status=record.status)
    return True


def publish_best_effort(svc: Services, record: BatchRecord) -> None:
    """For paths that cannot retry (a batch failed before it ran): log a failed copy instead of raising."""
    try:
        publish(svc, record)
    except Exception:
        log.exception("outbox write failed", batch_id=record.id, outbox=record.outbox)
