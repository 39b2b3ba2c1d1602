"""/v1/batches: create, retrieve, list and cancel batches (tenant-scoped)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from pagebatch.api.deps import list_page, services, tenant
from pagebatch.api.errors import not_found
from pagebatch.api.idempotency import IdempotencyKey, idempotent
from pagebatch.jobs.pipeline.batches import cancel_batch, create_batch, get_batch, list_batches
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.idempotency import fingerprint

router = APIRouter(prefix="/v1/batches")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


@router.post("")
def create(svc: Svc, owner: Tenant, body: CreateBatch, response: Response,
           idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    def new_batch() -> dict[str, Any]:
        return create_batch(svc, owner, input_file_id=body.input_file_id, endpoint=body.endpoint,
                            completion_window=body.completion_window, metadata=body.metadata,
                            output_expires_after=body.output_expires_after).public()

    return idempotent(svc, owner, "batches", idempotency_key, fingerprint(body.model_dump_json()), new_batch,
                      response)


@router.get("")
def list_all(svc: Svc, owner: Tenant, limit: Annotated[int, Query(ge=1, le=100)] = 20,
             after: str | None = None, order: Annotated[Literal["asc", "desc"], Query()] = "desc") -> dict[str, Any]:
    records, has_more = list_batches(svc, owner, after=after, limit=limit, order=order)
    return list_page(records, has_more)


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
