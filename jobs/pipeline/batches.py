"""Creating, cancelling and listing batches: what the API's batch routes call."""
from __future__ import annotations

import re
import time

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.ids import is_valid_id, new_batch_id
from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.schema import ENDPOINTS, BatchRecord
from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.services import Services

log = get_logger(__name__)
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str, max_s: int) -> int:
    """The seconds of a completion window: a whole number of s, m, h or d (OpenAI's "24h" among them), from one
    second up to ``max_s``. The batch expires exactly that long after it is created (docs/api.md says why)."""
    match = _WINDOW.match(window if isinstance(window, str) else "")
    if not match:
        raise JobError(f"completion_window must be a whole number of seconds, minutes, hours or days such as 24h, "
                       f"1h, 90m or 2d; got {str(window)[:40]!r}", param="completion_window")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > max_s:
        raise JobError(f"completion_window may be at most {max_s} seconds ({_human(max_s)}) on this server; "
                       f"got {window!r}", param="completion_window")
    return seconds


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)  # OpenAI's bounds: one hour to 30 days


def expires_after_seconds(value: object, param: str) -> int | None:
    """``{"anchor": "created_at", "seconds": N}`` (OpenAI's expires_after) -> N, or None when absent."""
    if value is None:
        return None
    low, high = EXPIRES_AFTER_S
    if not isinstance(value, dict) or value.get("anchor") != "created_at" or set(value) - {"anchor", "seconds"}:
        raise JobError(f'{param} must be {{"anchor": "created_at", "seconds": N}}', param=param)
    seconds = value.get("seconds")
    # A form field is text: ASCII digits only ("³" is a digit to str.isdigit, not to int), and few of them.
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit() and len(seconds) <= 12:
        seconds = int(seconds)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise JobError(f"{param}.seconds must be an integer from {low} to {high} (seconds), got "
                       f"{_shown(seconds)}", param=param)
    return seconds


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise JobError("metadata may have at most 16 keys", param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise JobError("metadata keys are at most 64 and values at most 512 characters", param="metadata")


def create_batch(svc: Services, tenant: str, *, input_file_id: str, endpoint: str, completion_window: str,
                 metadata: dict[str, str] | None, batch_id: str | None = None, default_model: str | None = None,
                 outbox: str | None = None, output_expires_after: dict | None = None) -> BatchRecord:
    """``batch_id``, ``default_model`` and ``outbox`` are for S3 triggers (jobs/pipeline/triggers), never from a request."""
    if endpoint not in ENDPOINTS:
        raise JobError(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    window = window_seconds(completion_window, svc.settings.max_completion_window_s)
    check_metadata(metadata)
    output_expires_after_s = expires_after_seconds(output_expires_after, "output_expires_after")
    file = svc.files.get(tenant, input_file_id)
    if file is None:
        raise JobError(f"No such File object: {input_file_id}", ErrorKind.NOT_FOUND, param="input_file_id")
    if file.purpose != "batch":
        raise JobError("the input file's purpose must be batch", param="input_file_id")
    now = int(time.time())
    record = BatchRecord(id=batch_id or new_batch_id(), tenant=tenant, endpoint=endpoint, input_file_id=input_file_id,
                         completion_window=completion_window, created_at=now, expires_at=now + window,
                         metadata=metadata, default_model=default_model, outbox=outbox,
                         output_expires_after_s=output_expires_after_s)
    svc.quotas.admit_batch(tenant, record.id, svc.settings.quota_for(tenant))  # QuotaExceeded: nothing written
    try:
        svc.state.create(record)
    except BaseException:
        svc.quotas.forget_batch(tenant, record.id)
        raise
    svc.dispatch.prepare(record.id, tenant)
    log.info("batch created", batch_id=record.id, tenant=tenant, input_file_id=input_file_id, endpoint=endpoint)
    return record


def get_batch(svc: Services, tenant: str, batch_id: str) -> BatchRecord | None:
    if not is_valid_id(batch_id, "batch_"):
        return None
    return svc.state.get(tenant, batch_id)


def cancel_batch(svc: Services, tenant: str, batch_id: str) -> BatchRecord | None:
    """Mark the batch cancelling; running shards see it and abort their requests in the engine."""
    record = get_batch(svc, tenant, batch_id)
    if record is None:
        return None
    if record.status == lifecycle.BatchStatus.CANCELLING:
        return record
    if not lifecycle.allowed(record.status, Event.CANCEL):
        raise JobError(f"Cannot cancel a batch with status {record.status}", ErrorKind.CONFLICT)

    def request_cancel(r: BatchRecord) -> None:
        r.cancel_requested = True

    changed, live = svc.state.transition(batch_id, Event.CANCEL, request_cancel)
    if live is None:
        raise JobError("the batch is being restored after a state-store restart; retry shortly", ErrorKind.UNAVAILABLE)
    if changed:
        log.info("batch cancel requested", batch_id=batch_id, tenant=tenant)
    return get_batch(svc, tenant, batch_id)


def list_batches(svc: Services, tenant: str, *, after: str | None, limit: int, order: str = "desc"
                 ) -> tuple[list[BatchRecord], bool]:
    after = after if after and is_valid_id(after, "batch_") else None
    return svc.state.list(tenant, after=after, limit=limit, order=order)
