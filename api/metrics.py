"""GET /metrics in Prometheus text format.

Two parts: this API process's own HTTP metrics (prometheus_client's registry), and the service's
state read from Redis at scrape time (jobs/store/metrics_collector.py).
"""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from pagebatch.api.deps import services
from pagebatch.api.errors import APIError
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.metrics_collector import ServiceCollector

router = APIRouter()

HTTP_REQUESTS = Counter("pagebatch_api_requests_total", "API requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("pagebatch_api_request_duration_seconds", "API request latency until the response starts",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, status).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def metrics_access(request: Request) -> None:
    """With PAGEBATCH_METRICS_TOKEN set, scrapers must present it as a bearer token."""
    expected = request.app.state.services.settings.metrics_token
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "GET /metrics needs the metrics token as a bearer token", code="invalid_metrics_token")


@router.get("/metrics", dependencies=[Depends(metrics_access)])
def metrics(svc: Annotated[Services, Depends(services)]) -> Response:
    service = CollectorRegistry(auto_describe=False)
    service.register(ServiceCollector(svc.redis))
    return Response(generate_latest(REGISTRY) + generate_latest(service), media_type=CONTENT_TYPE_LATEST)
