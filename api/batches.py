"""/v1/batches: create, retrieve, list and cancel batches (tenant-scoped)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from api.deps import services, tenant
from api.errors import not_found
from jobs.batches import cancel_batch, create_batch, get_batch, list_batches
from jobs.services import Services

router = APIRouter(prefix="/v1/batches")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("")
def create(svc: Svc, owner: Tenant, body: CreateBatch) -> dict[str, Any]:
    record = create_batch(svc, owner, input_file_id=body.input_file_id, endpoint=body.endpoint,
                          completion_window=body.completion_window, metadata=body.metadata)
    return record.public()


@router.get("")
def list_all(svc: Svc, owner: Tenant, limit: Annotated[int, Query(ge=1, le=100)] = 20,
             after: str | None = None) -> dict[str, Any]:
    records, has_more = list_batches(svc, owner, after=after, limit=limit)
    data = [r.public() for r in records]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/{batch_id}")
def retrieve(svc: Svc, owner: Tenant, batch_id: str) -> dict[str, Any]:
    record = get_batch(svc, owner, batch_id)
    if record is None:
        raise not_found("Batch", batch_id)
    return record.public()


@router.post("/{batch_id}/cancel")
def cancel(svc: Svc, owner: Tenant, batch_id: str) -> dict[str, Any]:
    record = cancel_batch(svc, owner, batch_id)
    if record is None:
        raise not_found("Batch", batch_id)
    return record.public()
