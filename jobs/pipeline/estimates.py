"""Estimates before enqueueing: validate and tokenize a whole file, price it, and time it on the live workers.

The API cannot tokenize (it holds no model), so ``POST /v1/estimates`` records an estimate in Redis and queues
its id for the model (``pb:estimates:<model>``; jobs/pipeline/estimate_requests.py); a worker of that model
answers it on a thread of its own (``EstimateServer``), with its engine's own request planning, so it never
waits behind shards. ``pagebatch estimate`` runs the same ``estimate_file`` in-process with the checkpoint's
tokenizer.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from pagebatch.jobs.batch.estimate import Estimate, PromptPlanner, Throughput, estimate_lines, eta, price
from pagebatch.jobs.batch.validate import FileError, Limits, check_lines, check_size
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.estimate_requests import ESTIMATE_TTL_S
from pagebatch.jobs.services import Services
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.metrics import read_snapshots
from pagebatch.jobs.store.registry import known_models
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.max_batch_bytes, settings.max_batch_lines, settings.max_line_bytes,
                  settings.default_max_tokens)


def estimate_file(lines: Iterable[bytes], size: int, planner: PromptPlanner, *, model: str, endpoint: str,
                  settings: Settings, known_models: set[str], workers: list[Throughput]) -> Estimate:
    """The estimate of one file for ``model``; FileError for a file no batch could run."""
    limits = limits_of(settings)
    check_size(size, limits)
    estimate = estimate_lines(check_lines(lines, endpoint=endpoint, known_models=known_models, limits=limits),
                              planner, model=model, endpoint=endpoint)
    estimate.cost = price(estimate, settings.prices.get(model))
    estimate.eta_seconds, estimate.eta = eta(estimate, workers)
    return estimate


def live_throughput(client: redis.Redis, model: str) -> list[Throughput]:
    """What each live worker of ``model`` measured of its engine (its telemetry snapshot), once it has a fit."""
    found = []
    for snap in read_snapshots(client):
        stats = snap.stats
        prompt, generated = stats.get("seconds_per_prompt_token"), stats.get("seconds_per_generated_token")
        if snap.model != model or prompt is None or generated is None:
            continue
        allowed = stats.get("completion_tokens_allowed") or 0
        fill = stats.get("completion_tokens_generated", 0) / allowed if allowed else None
        found.append(Throughput(snap.worker, float(prompt), float(generated), fill))
    return found


# --- the worker's side ---------------------------------------------------------------------------------------
class EstimateServer:
    """Answers the estimates queued for this worker's model, one at a time, with its engine's request planning."""

    def __init__(self, svc: Services, planner: PromptPlanner, model: str, wait_s: float = 1.0) -> None:
        self.svc, self.planner, self.model, self.wait_s = svc, planner, model, wait_s

    def serve_once(self) -> bool:
        """Answer the next queued estimate (waiting up to ``wait_s`` for one); whether there was one."""
        popped = self.svc.redis.blpop([keys.estimate_queue(self.model)], timeout=self.wait_s)
        if popped is None:
            return False
        estimate_id = popped[1]
        raw = self.svc.redis.get(keys.estimate(estimate_id))
        if raw is None:
            return True  # expired before anyone got to it
        record = json.loads(raw)
        try:
            record.update(status="completed", **self._estimate(record).public())
        except FileError as e:
            record.update(status="failed", error={"code": e.code, "message": e.message, "line": e.line})
        except NotFound:
            record.update(status="failed", error={"code": "file_not_found",
                                                  "message": f"the input file {record['input_file_id']} no longer exists"})
        except Exception as e:  # noqa: BLE001 - an estimate that breaks fails alone, the worker goes on
            log.exception("estimate failed", estimate_id=estimate_id)
            record.update(status="failed", error={"code": "internal_error", "message": f"{type(e).__name__}: {e}"})
        record["completed_at"] = int(time.time())
        self.svc.redis.set(keys.estimate(estimate_id), json.dumps(record), ex=ESTIMATE_TTL_S)
        return True

    def _estimate(self, record: dict[str, Any]) -> Estimate:
        svc, tenant, file_id = self.svc, record["tenant"], record["input_file_id"]
        size = svc.storage.size(layout.file_content(tenant, file_id))
        return estimate_file(svc.files.lines(tenant, file_id), size, self.planner, model=self.model,
                             endpoint=record["endpoint"], settings=svc.settings,
                             known_models=known_models(svc.redis),
                             workers=live_throughput(svc.redis, self.model))
