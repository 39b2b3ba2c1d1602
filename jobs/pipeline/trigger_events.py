"""S3 upload notifications, parsed (pure): AWS S3 events (also inside an SNS envelope) and MinIO webhooks.

A new object ``[PARENT/]inbox/NAME.jsonl`` becomes an :class:`ObjectRef`; anything else becomes an
``ignored`` :class:`Outcome` with the reason. Results go to ``[PARENT/]outbox/NAME/``.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus

from pagebatch.jobs.batch.schema import CHAT
from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.store.storage import is_bucket_name


MAX_RECORDS = 100  # AWS sends one record per notification, MinIO a handful
MAX_KEY_BYTES = 1024  # S3's own limit
MAX_SOURCE_CHARS = 512  # metadata values are at most 512 characters
_ETAG = re.compile(r"^[0-9A-Za-z-]{1,128}$")
_INBOX_KEY = re.compile(r"^(?P<parent>(?:.*/)?)inbox/(?P<name>[^/]+)\.jsonl$", re.DOTALL)

Status = Literal["started", "duplicate", "ignored"]


class EventError(JobError):
    """The payload cannot be handled at all (the webhook answers 4xx)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorKind.INVALID, code="invalid_event")


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
    if not is_bucket_name(bucket):
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


def parse_event(payload: Any) -> list[ObjectRef | Outcome]:
    """AWS S3 notifications (also inside an SNS envelope) and MinIO webhook payloads -> objects or reasons.

    Raises EventError for a payload that is not a JSON object or carries too many records.
    """
    if not isinstance(payload, dict):
        raise EventError("the payload must be a JSON object (an S3 event notification)")
    if payload.get("Type") == "SubscriptionConfirmation":
        return [ignored("an SNS subscription confirmation: confirm it by visiting its SubscribeURL yourself")]
    if payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        try:
            payload = json.loads(payload["Message"])
        except (ValueError, RecursionError):
            return [ignored("the SNS message is not JSON")]
        if not isinstance(payload, dict):
            return [ignored("the SNS message is not an S3 event notification")]
    if payload.get("Event") == "s3:TestEvent":
        return [ignored("an S3 test event")]
    records = payload.get("Records")
    if records is None:
        return [ignored("not an S3 event notification: no Records")]
    if not isinstance(records, list):
        return [ignored("Records must be a list")]
    if len(records) > MAX_RECORDS:
        raise EventError(f"at most {MAX_RECORDS} records per notification, got {len(records)}")
    return [parse_record(record) for record in records]


def parse_record(record: Any) -> ObjectRef | Outcome:
    if not isinstance(record, dict):
        return ignored("the record is not an object")
    source = record.get("eventSource")
    if source is not None and source not in ("aws:s3", "minio:s3"):
        return ignored(f"eventSource {str(source)[:64]!r} is not S3")
    s3 = record.get("s3") if isinstance(record.get("s3"), dict) else {}
    bucket = _get(s3, "bucket", "name")
    obj = s3.get("object") if isinstance(s3.get("object"), dict) else {}
    raw_key = obj.get("key")
    if not isinstance(bucket, str) or not isinstance(raw_key, str):
        return ignored("the record has no s3.bucket.name and s3.object.key")
    if not is_bucket_name(bucket):
        return ignored("s3.bucket.name is not a valid bucket name")
    if len(raw_key) > 3 * MAX_KEY_BYTES:  # "%XX" per byte at most
        return ignored(f"the key is longer than {MAX_KEY_BYTES} bytes", bucket)
    key = decode_key(raw_key)
    if key is None:
        return ignored("the key is not URL-encoded UTF-8", bucket)
    name = record.get("eventName")
    kind = name.removeprefix("s3:") if isinstance(name, str) else ""
    if kind.startswith("ObjectRemoved"):
        return ignored("a deletion: nothing to start", bucket, key)
    if not kind.startswith("ObjectCreated"):
        return ignored(f"eventName {str(name)[:64]!r} is not an object creation", bucket, key)
    problem = object_problem(bucket, key)
    if problem is not None:
        return ignored(problem, bucket, key)
    raw_etag = obj.get("eTag", obj.get("etag"))
    etag = normalize_etag(raw_etag)
    if raw_etag not in (None, "") and etag is None:
        return ignored("the record's eTag is not valid", bucket, key)
    return ObjectRef(bucket, key, etag)


def _get(data: dict[str, Any], *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data




def ignored(reason: str, bucket: str | None = None, key: str | None = None, etag: str | None = None) -> Outcome:
    return Outcome("ignored", reason, bucket, key, etag)
