"""POST /v1/estimates and GET /v1/estimates/{id}: a pagebatch extension, what a file will cost and take (docs/api.md).

The whole file is validated and tokenized without enqueueing anything, by a live worker of the model (the API holds
no tokenizer; jobs/pipeline/estimate_requests.py). POST waits up to ``PAGEBATCH_ESTIMATE_WAIT_S`` for the answer and
returns it (200); an estimate still running then comes back as it stands (202), to be fetched again by id.
"""
from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pagebatch.api.deps import services, tenant
from pagebatch.api.errors import not_found
from pagebatch.jobs.pipeline.estimate_requests import get_estimate, submit_estimate
from pagebatch.jobs.services import Services

router = APIRouter(prefix="/v1/estimates")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]
POLL_S = 0.1


class CreateEstimate(BaseModel):
    input_file_id: str = Field(max_length=128)
    model: str = Field(min_length=1, max_length=256)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"] = \
        "/v1/chat/completions"


@router.post("")
async def create(svc: Svc, owner: Tenant, body: CreateEstimate) -> JSONResponse:
    record = await run_in_threadpool(submit_estimate, svc, owner, input_file_id=body.input_file_id,
                                     endpoint=body.endpoint, model=body.model)
    deadline = time.monotonic() + svc.settings.estimate_wait_s
    while record["status"] == "in_progress" and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        record = await run_in_threadpool(get_estimate, svc, owner, record["id"]) or record
    return JSONResponse(record, status_code=202 if record["status"] == "in_progress" else 200)


@router.get("/{estimate_id}")
def retrieve(svc: Svc, owner: Tenant, estimate_id: str) -> dict[str, Any]:
    record = get_estimate(svc, owner, estimate_id)
    if record is None:
        raise not_found("Estimate", estimate_id)
    return record
