"""Starting a batch from an S3 object version: the one path of the webhook and of ``pagebatch watch``.

Bucket/key/etag claims (jobs/store/claims.py) make redelivered notifications and repeated polls
start nothing new; the object is read through the storage interface, only if its ETag is unchanged.
"""
from __future__ import annotations

from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from pagebatch.jobs.batch.ids import new_batch_id
from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.batches import create_batch
from pagebatch.jobs.pipeline.trigger_events import (
    ObjectRef,
    Outcome,
    TriggerOptions,
    ignored,
    inbox_name,
    normalize_etag,
    object_problem,
    outbox_prefix,
    parse_event,
    source_url,
)
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.claims import Claim, TriggerClaims, claim_id
from pagebatch.jobs.store.storage import bucket_storage

log = get_logger(__name__)
_RETRYABLE_CODES = {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"}


class SourceUnavailable(JobError):
    """Object storage did not answer; the notification should be retried (the webhook answers 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorKind.UNAVAILABLE, code="storage_unavailable")


def handle_event(svc: Services, payload: Any, options: TriggerOptions) -> list[Outcome]:
    """A notification from outside: each object must sit in a bucket the caller's tenant owns."""
    outcomes = []
    for item in parse_event(payload):
        if not isinstance(item, Outcome):
            refusal = _not_owned(svc, item, options.tenant)
            item = refusal if refusal is not None else start_object(svc, item, options)
        outcomes.append(item)
    return outcomes


def _not_owned(svc: Services, ref: ObjectRef, tenant: str) -> Outcome | None:
    if svc.settings.inbox_owner(ref.bucket) != tenant:
        return ignored(f"bucket {ref.bucket} is not an inbox of this API key's tenant; "
                        "register it in PAGEBATCH_INBOX_BUCKETS as bucket=tenant", ref.bucket, ref.key)
    storage = svc.storage
    if getattr(storage, "bucket", None) == ref.bucket and storage.contains(ref.key):
        return ignored("the key lies inside pagebatch's own storage prefix", ref.bucket, ref.key)
    return None


def start_object(svc: Services, ref: ObjectRef, options: TriggerOptions) -> Outcome:
    """Start one batch on the object version, unless one was started (or is starting) already."""
    problem = object_problem(ref.bucket, ref.key)
    if problem is not None:
        return ignored(problem, ref.bucket, ref.key, ref.etag)
    with structlog.contextvars.bound_contextvars(bucket=ref.bucket, key=ref.key):
        etag = ref.etag or _current_etag(ref)
        if isinstance(etag, Outcome):
            return etag
        claims = TriggerClaims(svc)
        ident = claim_id(ref.bucket, ref.key, etag)
        held = claims.current(ident)
        if held is not None:
            return _duplicate(ref, etag, held, options.tenant)
        marker = claims.marker(ident)
        if marker is not None and svc.state.get(marker.tenant, marker.batch_id) is not None:
            done = Claim(marker.tenant, marker.batch_id)
            claims.confirm(ident, done)  # Redis lost it (a restart): answer from Redis again from now on
            return _duplicate(ref, etag, done, options.tenant)
        # A marker without its batch: an earlier attempt died before creating it; reuse its id.
        claim = Claim(options.tenant, marker.batch_id if marker is not None else new_batch_id())
        if not claims.acquire(ident, claim):
            return _duplicate(ref, etag, claims.current(ident), options.tenant)
        try:
            outcome = _start(svc, claims, ident, ref, etag, claim, options)
        except (BotoCoreError, ClientError) as e:
            claims.release(ident, claim)
            raise SourceUnavailable(f"object storage failed while starting the batch: {e}") from e
        except BaseException:
            claims.release(ident, claim)
            raise
        if outcome.status == "started":
            claims.confirm(ident, claim)
        else:
            claims.release(ident, claim)
        return outcome


def _start(svc: Services, claims: TriggerClaims, ident: str, ref: ObjectRef, etag: str, claim: Claim,
           options: TriggerOptions) -> Outcome:
    try:
        body, size = bucket_storage(ref.bucket).open_version(ref.key, etag)
    except (BotoCoreError, ClientError) as e:
        return ignored(_unreadable(e), ref.bucket, ref.key, etag)
    try:
        limit = svc.settings.max_upload_bytes
        if size > limit:
            return ignored(f"the object has {size} bytes; the limit is {limit}", ref.bucket, ref.key, etag)
        claims.write_marker(ident, ref.bucket, ref.key, etag, claim)
        file = svc.files.create(claim.tenant, f"{inbox_name(ref.key)}.jsonl", "batch", body, size)
    finally:
        body.close()
    try:
        record = create_batch(svc, claim.tenant, input_file_id=file.id, endpoint=options.endpoint,
                              completion_window="24h", metadata={"source": source_url(ref.bucket, ref.key)},
                              batch_id=claim.batch_id, default_model=options.model,
                              outbox=source_url(ref.bucket, outbox_prefix(ref.key)))
    except JobError as e:
        if e.kind == ErrorKind.UNAVAILABLE:
            raise
        return ignored(e.message, ref.bucket, ref.key, etag)
    log.info("batch started by an S3 object", batch_id=record.id, tenant=claim.tenant, etag=etag)
    return Outcome("started", None, ref.bucket, ref.key, etag, record.id)


def _current_etag(ref: ObjectRef) -> str | Outcome:
    try:
        etag = bucket_storage(ref.bucket).etag(ref.key)
    except (BotoCoreError, ClientError) as e:
        return ignored(_unreadable(e), ref.bucket, ref.key)
    return normalize_etag(etag) or ignored("the object has no usable ETag", ref.bucket, ref.key)


def _unreadable(error: Exception) -> str:
    """Why the object cannot be read, for errors retrying will not fix; raises SourceUnavailable otherwise."""
    if isinstance(error, ParamValidationError):
        return "not a valid S3 bucket or key"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status < 500 and code not in _RETRYABLE_CODES:
            return {
                "NoSuchKey": "the object no longer exists", "404": "the object no longer exists",
                "NoSuchBucket": "the bucket does not exist",
                "PreconditionFailed": "the object changed since the event (its newer version has its own event)",
                "412": "the object changed since the event (its newer version has its own event)",
                "AccessDenied": "access to the object was denied", "403": "access to the object was denied",
            }.get(code, f"the object could not be read: {code or status}")
    raise SourceUnavailable(f"object storage is unavailable: {error}") from error


def _duplicate(ref: ObjectRef, etag: str, held: Claim | None, tenant: str) -> Outcome:
    mine = held is not None and held.tenant == tenant
    reason = "this object version already started a batch" + ("" if mine or held is None else " (another tenant's)")
    return Outcome("duplicate", reason, ref.bucket, ref.key, etag, held.batch_id if mine else None)
