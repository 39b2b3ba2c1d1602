"""/v1/s3/events: S3 and MinIO upload notifications start batches (see jobs/triggers.py).

The caller's key names the tenant that owns the batches. Lines that name no model use ``?model=``,
else ``PAGEBATCH_DEFAULT_MODEL``. Every record gets an answer (started, duplicate or ignored, with
the reason); only a body that is not a JSON object is refused (4xx), and only an object-storage
outage answers 503, so the sender retries.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from pagebatch.api.deps import services, tenant
from pagebatch.api.errors import APIError
from pagebatch.jobs.batch.schema import CHAT
from pagebatch.jobs.pipeline.trigger_events import TriggerOptions
from pagebatch.jobs.pipeline.trigger_start import handle_event
from pagebatch.jobs.services import Services

router = APIRouter(prefix="/v1/s3")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]

_OBJECT_CREATED = {
    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": "ObjectCreated:Put",
    "s3": {"bucket": {"name": "nightly"},
           "object": {"key": "reviews/inbox/2024-06-01.jsonl", "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e"}},
}
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An AWS S3 event notification (also inside an SNS envelope) or a MinIO webhook payload.",
    "properties": {
        "EventName": {"type": "string"},
        "Key": {"type": "string"},
        "Records": {
            "type": "array", "maxItems": 100,
            "items": {"type": "object", "properties": {
                "eventSource": {"type": "string"},
                "eventName": {"type": "string"},
                "s3": {"type": "object", "properties": {
                    "bucket": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "object": {"type": "object", "properties": {
                        "key": {"type": "string"}, "size": {"type": "integer"}, "eTag": {"type": "string"}}},
                }},
            }},
        },
    },
    "example": {"Records": [_OBJECT_CREATED]},
}


@router.post("/events", openapi_extra={"requestBody": {"required": True,
                                                       "content": {"application/json": {"schema": _EVENT_SCHEMA}}}})
async def s3_events(request: Request, svc: Svc, owner: Tenant,
                    model: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
                    endpoint: Annotated[Literal["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"], Query()] = CHAT,
                    ) -> Any:
    raw = await _read_bounded(request, svc.settings.max_event_bytes)
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise APIError(400, "the body is not JSON (an S3 event notification)", code="invalid_json") from None
    options = TriggerOptions(tenant=owner, model=model or svc.settings.default_model, endpoint=endpoint)
    outcomes = await run_in_threadpool(handle_event, svc, payload, options)  # JobError: api/errors.py answers
    return {"object": "list", "data": [o.public() for o in outcomes],
            "started": sum(o.status == "started" for o in outcomes)}


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"an event notification is at most {limit} bytes", code="payload_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"an event notification is at most {limit} bytes", code="payload_too_large")
    return bytes(body)
