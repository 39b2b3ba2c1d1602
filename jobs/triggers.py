"""S3 uploads start batches: event parsing, the one start-a-batch path, and the inbox poller.

A new object ``[PARENT/]inbox/NAME.jsonl`` starts one batch, owned by the tenant the trigger acts
for; its results are also copied to ``[PARENT/]outbox/NAME/`` (jobs/outbox.py). The webhook
(api/events.py) and ``pagebatch watch`` both end in :func:`start_object`, whose bucket/key/etag
claims (jobs/claims.py) make redelivered notifications and repeated polls start nothing new.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from jobs.batches import BatchRequestError, create_batch
from jobs.claims import Claim, TriggerClaims, claim_id
from jobs.ids import new_batch_id
from jobs.logs import get_logger
from jobs.openai_format import CHAT
from jobs.services import Services
from jobs.storage import bucket_storage

log = get_logger(__name__)

MAX_RECORDS = 100  # AWS sends one record per notification, MinIO a handful
MAX_KEY_BYTES = 1024  # S3's own limit
MAX_SOURCE_CHARS = 512  # metadata values are at most 512 characters
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_ETAG = re.compile(r"^[0-9A-Za-z-]{1,128}$")
_INBOX_KEY = re.compile(r"^(?P<parent>(?:.*/)?)inbox/(?P<name>[^/]+)\.jsonl$", re.DOTALL)
_RETRYABLE_CODES = {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"}

Status = Literal["started", "duplicate", "ignored"]


class EventError(ValueError):
    """The payload cannot be handled at all (the webhook answers 4xx)."""


class SourceUnavailable(RuntimeError):
    """Object storage did not answer; the notification should be retried (the webhook answers 503)."""


@dataclass(frozen=True)
class ObjectRef:
    """One object version an event or a listing announced; ``etag`` None: ask S3 for it."""

    bucket: str
    key: str
    etag: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str | None = None
    bucket: str | None = None
    key: str | None = None
    etag: str | None = None
    batch_id: str | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TriggerOptions:
    tenant: str
    model: str | None = None  # the model of lines that name none
    endpoint: str = CHAT


# --- keys ------------------------------------------------------------------------------------------

def source_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def inbox_name(key: str) -> str | None:
    match = _INBOX_KEY.match(key)
    return match.group("name") if match else None


def outbox_prefix(key: str) -> str:
    """``a/b/inbox/x.jsonl`` -> ``a/b/outbox/x/``."""
    match = _INBOX_KEY.match(key)
    if match is None:
        raise ValueError(f"not an inbox key: {key!r}")
    return f"{match.group('parent')}outbox/{match.group('name')}/"


def object_problem(bucket: str, key: str) -> str | None:
    """Why this object cannot start a batch, or None if it can."""
    if not _BUCKET.match(bucket):
        return "not a valid bucket name"
    if len(key.encode("utf-8", errors="replace")) > MAX_KEY_BYTES:
        return f"the key is longer than {MAX_KEY_BYTES} bytes"
    if inbox_name(key) is None:
        return "not an inbox file: the key does not end in inbox/NAME.jsonl"
    if any(part in ("", ".", "..") for part in key.split("/") + outbox_prefix(key).split("/")[:-1]):
        return "the key has empty, '.' or '..' path segments"
    if len(source_url(bucket, key)) > MAX_SOURCE_CHARS:
        return f"s3://bucket/key is longer than {MAX_SOURCE_CHARS} characters (the metadata.source limit)"
    return None


def decode_key(raw: str) -> str | None:
    """S3 and MinIO events carry keys form-encoded (a space is ``+``); None if not valid UTF-8 once decoded."""
    try:
        return unquote_plus(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None


def normalize_etag(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    etag = raw.strip().strip('"')
    return etag if _ETAG.match(etag) else None


# --- events (pure) ----------------------------------------------------------------------------------

def parse_event(payload: Any) -> list[ObjectRef | Outcome]:
    """AWS S3 notifications (also inside an SNS envelope) and MinIO webhook payloads -> objects or reasons.

    Raises EventError for a payload that is not a JSON object or carries too many records.
    """
    if not isinstance(payload, dict):
        raise EventError("the payload must be a JSON object (an S3 event notification)")
    if payload.get("Type") == "SubscriptionConfirmation":
        return [_ignored("an SNS subscription confirmation: confirm it by visiting its SubscribeURL yourself")]
    if payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        try:
            payload = json.loads(payload["Message"])
        except (ValueError, RecursionError):
            return [_ignored("the SNS message is not JSON")]
        if not isinstance(payload, dict):
            return [_ignored("the SNS message is not an S3 event notification")]
    if payload.get("Event") == "s3:TestEvent":
        return [_ignored("an S3 test event")]
    records = payload.get("Records")
    if records is None:
        return [_ignored("not an S3 event notification: no Records")]
    if not isinstance(records, list):
        return [_ignored("Records must be a list")]
    if len(records) > MAX_RECORDS:
        raise EventError(f"at most {MAX_RECORDS} records per notification, got {len(records)}")
    return [parse_record(record) for record in records]


def parse_record(record: Any) -> ObjectRef | Outcome:
    if not isinstance(record, dict):
        return _ignored("the record is not an object")
    source = record.get("eventSource")
    if source is not None and source not in ("aws:s3", "minio:s3"):
        return _ignored(f"eventSource {str(source)[:64]!r} is not S3")
    s3 = record.get("s3") if isinstance(record.get("s3"), dict) else {}
    bucket = _get(s3, "bucket", "name")
    obj = s3.get("object") if isinstance(s3.get("object"), dict) else {}
    raw_key = obj.get("key")
    if not isinstance(bucket, str) or not isinstance(raw_key, str):
        return _ignored("the record has no s3.bucket.name and s3.object.key")
    if not _BUCKET.match(bucket):
        return _ignored("s3.bucket.name is not a valid bucket name")
    if len(raw_key) > 3 * MAX_KEY_BYTES:  # "%XX" per byte at most
        return _ignored(f"the key is longer than {MAX_KEY_BYTES} bytes", bucket)
    key = decode_key(raw_key)
    if key is None:
        return _ignored("the key is not URL-encoded UTF-8", bucket)
    name = record.get("eventName")
    kind = name.removeprefix("s3:") if isinstance(name, str) else ""
    if kind.startswith("ObjectRemoved"):
        return _ignored("a deletion: nothing to start", bucket, key)
    if not kind.startswith("ObjectCreated"):
        return _ignored(f"eventName {str(name)[:64]!r} is not an object creation", bucket, key)
    problem = object_problem(bucket, key)
    if problem is not None:
        return _ignored(problem, bucket, key)
    raw_etag = obj.get("eTag", obj.get("etag"))
    etag = normalize_etag(raw_etag)
    if raw_etag not in (None, "") and etag is None:
        return _ignored("the record's eTag is not valid", bucket, key)
    return ObjectRef(bucket, key, etag)


def _get(data: dict[str, Any], *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _ignored(reason: str, bucket: str | None = None, key: str | None = None, etag: str | None = None) -> Outcome:
    return Outcome("ignored", reason, bucket, key, etag)


# --- starting batches ------------------------------------------------------------------------------

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
        return _ignored(f"bucket {ref.bucket} is not an inbox of this API key's tenant; "
                        "register it in PAGEBATCH_INBOX_BUCKETS as bucket=tenant", ref.bucket, ref.key)
    storage = svc.storage
    if getattr(storage, "bucket", None) == ref.bucket and ref.key.startswith(getattr(storage, "prefix", "")):
        return _ignored("the key lies inside pagebatch's own storage prefix", ref.bucket, ref.key)
    return None


def start_object(svc: Services, ref: ObjectRef, options: TriggerOptions) -> Outcome:
    """Start one batch on the object version, unless one was started (or is starting) already."""
    problem = object_problem(ref.bucket, ref.key)
    if problem is not None:
        return _ignored(problem, ref.bucket, ref.key, ref.etag)
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
    client = bucket_storage(ref.bucket).client
    try:
        obj = client.get_object(Bucket=ref.bucket, Key=ref.key, IfMatch=f'"{etag}"')
    except (BotoCoreError, ClientError) as e:
        return _ignored(_unreadable(e), ref.bucket, ref.key, etag)
    body, size = obj["Body"], int(obj["ContentLength"])
    try:
        limit = svc.settings.max_upload_bytes
        if size > limit:
            return _ignored(f"the object has {size} bytes; the limit is {limit}", ref.bucket, ref.key, etag)
        claims.write_marker(ident, ref.bucket, ref.key, etag, claim)
        file = svc.files.create(claim.tenant, f"{inbox_name(ref.key)}.jsonl", "batch", body, size)
    finally:
        body.close()
    try:
        record = create_batch(svc, claim.tenant, input_file_id=file.id, endpoint=options.endpoint,
                              completion_window="24h", metadata={"source": source_url(ref.bucket, ref.key)},
                              batch_id=claim.batch_id, default_model=options.model,
                              outbox=source_url(ref.bucket, outbox_prefix(ref.key)))
    except BatchRequestError as e:
        return _ignored(e.message, ref.bucket, ref.key, etag)
    log.info("batch started by an S3 object", batch_id=record.id, tenant=claim.tenant, etag=etag)
    return Outcome("started", None, ref.bucket, ref.key, etag, record.id)


def _current_etag(ref: ObjectRef) -> str | Outcome:
    try:
        head = bucket_storage(ref.bucket).client.head_object(Bucket=ref.bucket, Key=ref.key)
    except (BotoCoreError, ClientError) as e:
        return _ignored(_unreadable(e), ref.bucket, ref.key)
    return normalize_etag(head.get("ETag")) or _ignored("the object has no usable ETag", ref.bucket, ref.key)


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


# --- polling ---------------------------------------------------------------------------------------

def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix)."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name")
    return bucket, prefix


def poll_once(svc: Services, bucket: str, prefix: str, options: TriggerOptions) -> list[Outcome]:
    """List the inbox and start a batch for every object version not started yet."""
    paginator = bucket_storage(bucket).client.get_paginator("list_objects_v2")
    outcomes = []
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if object_problem(bucket, item["Key"]) is None:
                    ref = ObjectRef(bucket, item["Key"], normalize_etag(item.get("ETag")))
                    outcomes.append(start_object(svc, ref, options))
    except (BotoCoreError, ClientError) as e:
        raise SourceUnavailable(f"cannot list s3://{bucket}/{prefix}: {e}") from e
    return outcomes


def watch(svc: Services, url: str, options: TriggerOptions, *, interval_s: float, once: bool,
          stop: threading.Event, report: Callable[[list[Outcome]], None] = lambda _: None) -> None:
    """Poll ``url`` every ``interval_s`` seconds until ``stop`` is set (or once); storage outages are retried."""
    bucket, prefix = parse_s3_url(url)
    while True:
        try:
            report(poll_once(svc, bucket, prefix, options))
        except (SourceUnavailable, redis.RedisError) as e:
            if once:
                raise
            log.warning("poll failed; retrying next interval", error=str(e))
        if once or stop.wait(interval_s):
            return
