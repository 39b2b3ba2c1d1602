"""The FastAPI application (OpenAI Batch API under /v1). Started by `pagebatch api` via uvicorn."""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response

from pagebatch.api import batches, estimates, events, files, health, metrics, progress, quotas, results, ui
from pagebatch.api.errors import install_error_handlers
from pagebatch.api.limits import BodySizeLimit
from pagebatch.jobs.logs import configure_logging
from pagebatch.jobs.periodic import Periodic
from pagebatch.jobs.pipeline.sweeper import sweep_once_per_interval
from pagebatch.jobs.services import Services
from pagebatch.jobs.settings import Settings, get_settings

MULTIPART_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    services = Services.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The API sweeps too (one process at a time does): deadlines hold even when no worker runs.
        sweeper = Periodic("sweep", settings.sweep_interval_s,
                           lambda: sweep_once_per_interval(services, settings.sweep_interval_s)).start()
        yield
        sweeper.stop()

    app = FastAPI(title="pagebatch", version="0.1.0", redoc_url=None, lifespan=lifespan,
                  docs_url="/docs" if settings.api_docs else None,
                  openapi_url="/openapi.json" if settings.api_docs else None)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(results.router)
    app.include_router(progress.router)
    app.include_router(estimates.router)
    app.include_router(ui.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(quotas.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)

    @app.middleware("http")
    async def observe(request: Request, call_next) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id[:64])
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-request-id"] = request_id[:64]
        route = request.scope.get("route")
        metrics.observe_request(request.method, getattr(route, "path", "unmatched"), response.status_code,
                                time.perf_counter() - started)
        return response

    return app
