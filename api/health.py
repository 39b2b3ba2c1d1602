"""Unauthenticated health probe: /healthz (Prometheus /metrics is in api/metrics.py)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pagebatch.api.deps import services
from pagebatch.jobs.services import Services

router = APIRouter()


@router.get("/healthz")
def healthz(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    health = svc.health()
    return JSONResponse({"status": "ok" if health.ok else "degraded", **health.checks},
                        status_code=200 if health.ok else 503)
