"""Estimates as the API sees them: queued for a live worker of the model, read back by id (tenant-scoped).

The API holds no tokenizer and loads no engine (nor torch): a worker of the model answers each queued estimate
with its own request planning (jobs/pipeline/estimates.py, ``EstimateServer``).
"""
from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys
from pagebatch.jobs.store.registry import live_workers

ESTIMATE_TTL_S = 3600
_ESTIMATE_ID = re.compile(r"est_[0-9a-f]{24}")


def submit_estimate(svc: Services, tenant: str, *, input_file_id: str, endpoint: str, model: str) -> dict[str, Any]:
    file = svc.files.get(tenant, input_file_id)
    if file is None:
        raise JobError(f"No such File object: {input_file_id}", ErrorKind.NOT_FOUND, param="input_file_id")
    if file.purpose != "batch":
        raise JobError("the input file's purpose must be batch", param="input_file_id")
    if model not in live_workers(svc.redis).values():
        raise JobError(f"no live worker serves the model {model!r}; an estimate needs one (its tokenizer and its "
                       "measured throughput): start one, or check the model name", ErrorKind.NOT_FOUND,
                       param="model", code="model_not_found")
    record = {"id": f"est_{secrets.token_hex(12)}", "object": "estimate", "status": "in_progress",
              "input_file_id": input_file_id, "endpoint": endpoint, "model": model, "created_at": int(time.time()),
              "tenant": tenant}
    pipe = svc.redis.pipeline()
    pipe.set(keys.estimate(record["id"]), json.dumps(record), ex=ESTIMATE_TTL_S)
    pipe.rpush(keys.estimate_queue(model), record["id"])
    pipe.execute()
    return _public(record)


def get_estimate(svc: Services, tenant: str, estimate_id: str) -> dict[str, Any] | None:
    raw = svc.redis.get(keys.estimate(estimate_id)) if _ESTIMATE_ID.fullmatch(estimate_id) else None
    record = json.loads(raw) if raw else None
    return _public(record) if record and record["tenant"] == tenant else None


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "tenant"}
