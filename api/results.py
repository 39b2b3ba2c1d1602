"""GET /v1/batches/{id}/results: a pagebatch extension, the result lines finished so far (docs/api.md).

Works for a batch in any status: while it runs, lines come from its finished shards; once it has ended, from
its output and error files. ``after`` is the ``cursor`` of the previous page, so each call returns only
what is new; no line is returned twice.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from pagebatch.api.deps import services, tenant
from pagebatch.api.errors import APIError, not_found
from pagebatch.jobs.batch.results_cursor import MAX_TOKEN_CHARS, CursorError, ResultsCursor
from pagebatch.jobs.pipeline.batches import get_batch
from pagebatch.jobs.pipeline.results_so_far import results_so_far
from pagebatch.jobs.services import Services

router = APIRouter(prefix="/v1/batches")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]


@router.get("/{batch_id}/results")
def results(svc: Svc, owner: Tenant, batch_id: str,
            after: Annotated[str | None, Query(max_length=MAX_TOKEN_CHARS)] = None,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    record = get_batch(svc, owner, batch_id)
    if record is None:
        raise not_found("Batch", batch_id)
    try:
        cursor = ResultsCursor.decode(after)
    except CursorError as e:
        raise APIError(400, f"after: {e}; pass the cursor of the previous page, or leave after out to start over",
                       code="invalid_cursor", param="after") from None
    page = results_so_far(svc, record, cursor, limit)
    return {"object": "batch.results", "batch_id": record.id, "status": page.status, "output": page.output,
            "errors": page.errors, "cursor": page.cursor, "has_more": page.has_more, "complete": page.complete}
