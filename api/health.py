"""Unauthenticated health probe: /healthz (Prometheus /metrics is in api/metrics.py)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import services
from jobs.services import Services
from jobs.state import live_workers

router = APIRouter()


@router.get("/healthz")
def healthz(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
        checks["workers"] = live_workers(svc.redis)
    except Exception as e:  # report, don't raise: this endpoint is for probes
        checks["redis"] = f"error: {type(e).__name__}"
    try:
        svc.storage.list("active/", limit=1)
        checks["storage"] = "ok"
    except Exception as e:
        checks["storage"] = f"error: {type(e).__name__}"
    ok = checks["redis"] == "ok" and checks["storage"] == "ok"
    return JSONResponse({"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503)
