"""GET /v1/batches/{id}/progress: a pagebatch extension, the batch's progress as Server-Sent Events.

Events (``event:`` then one JSON ``data:`` line): ``shard`` as each shard finishes, ``progress`` snapshots
(status, counts, tokens, tokens/s, ETA, first errors) whenever they change; the stream ends after the
snapshot with the batch's final status. A comment line every 15 s keeps idle proxies from closing it.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from pagebatch.api.deps import services, tenant
from pagebatch.api.errors import not_found
from pagebatch.jobs.errors import OUTAGE_ERRORS
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.batches import get_batch
from pagebatch.jobs.pipeline.progress import ProgressWatch
from pagebatch.jobs.services import Services

router = APIRouter(prefix="/v1/batches")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]
log = get_logger(__name__)
KEEPALIVE_S = 15.0


@router.get("/{batch_id}/progress", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
async def progress(request: Request, svc: Svc, owner: Tenant, batch_id: str) -> StreamingResponse:
    record = await run_in_threadpool(get_batch, svc, owner, batch_id)
    if record is None:
        raise not_found("Batch", batch_id)
    watch = ProgressWatch(svc, owner, record.id)
    interval = svc.settings.progress_interval_s

    async def events() -> AsyncIterator[str]:
        yield f"retry: {int(interval * 3000)}\n\n"
        quiet_since = time.monotonic()
        while True:
            try:
                found, ended = await run_in_threadpool(watch.poll)
            except OUTAGE_ERRORS as e:  # Redis or storage briefly away: keep the stream, try again next time
                log.warning("progress poll failed", batch_id=record.id, error=repr(e))
                found, ended = [], False
            for name, data in found:
                yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                quiet_since = time.monotonic()
            if ended or await request.is_disconnected():
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(interval)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
