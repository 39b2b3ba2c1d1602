"""/v1/quotas: the caller's quotas and what it uses of them now (tenant-scoped)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from pagebatch.api.deps import services, tenant
from pagebatch.jobs.services import Services

router = APIRouter(prefix="/v1/quotas")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]


@router.get("")
def quotas(svc: Svc, owner: Tenant) -> dict[str, Any]:
    """Limits (0: none) and usage: bytes and files stored, batches in flight, lines and tokens enqueued per model."""
    usage = svc.quotas.usage(owner)
    return {
        "object": "quota",
        "limits": svc.settings.quota_for(owner).model_dump(),
        "usage": {
            "bytes": usage.bytes, "files": usage.files, "uploads_in_progress": usage.pending_uploads,
            "batches_in_flight": usage.batches_in_flight,
            "enqueued": [{"model": model, "lines": lines, "tokens": tokens}
                         for model, (lines, tokens) in sorted(usage.enqueued.items())],
        },
    }
