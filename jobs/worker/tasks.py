"""The Celery tasks: thin wrappers that hand each step to its module with the worker's runtime.

A shard task's argument is a ShardRef (jobs/batch/shard_ref.py reads and writes it, and nothing else does).
A shard this worker cannot read because it is newer (its task or its stored input) goes back to the queue
for another worker, with nothing counted; see docs/architecture.md, "The shard contract".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, Task, signals

from pagebatch.jobs.batch.shard_ref import ShardRef, ShardTooNew
from pagebatch.jobs.engine_host import EngineHandle
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.finalize import finalize_batch
from pagebatch.jobs.pipeline.prepare import PrepareBusy, fail_batch, prepare_batch
from pagebatch.jobs.pipeline.shard import NoLiveness, run_shard
from pagebatch.jobs.retry import through_outages
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.queues import FINALIZE_TASK, PREPARE_TASK, SHARD_TASK
from pagebatch.jobs.worker.lease import LeaseKeeper

log = get_logger(__name__)
MAX_PREPARE_RETRIES = 10
REFUSED_RETRY_S = 10  # a shard too new for this worker waits this long before the queue offers it again
BUSY_RETRY_S = 5  # a prepare whose batch another process is writing looks again this much later


def _backoff(task: Task) -> int:
    return min(60, 2 ** task.request.retries)


@dataclass
class WorkerRuntime:
    """What a worker process holds for its whole life: one engine loop, one model name."""

    services: Services
    loop: EngineHandle
    model_name: str
    worker_id: str
    lease: LeaseKeeper | None = None  # keeps running shards' broker leases, while they make progress


def task_ids(name: str, args: Any) -> dict[str, Any]:
    """The log fields of a task message: a shard's from its ref, a batch step's from (batch_id, tenant)."""
    if name == SHARD_TASK:
        try:
            return ShardRef.from_task_args(args).log_fields()
        except (ValueError, ShardTooNew):
            return {}
    if isinstance(args, (list, tuple)) and len(args) == 2:
        return {"batch_id": args[0], "tenant": args[1]}
    return {}


def _bind_task_ids(task: Task | None = None, args: Any = None, **_: Any) -> None:
    """Every line a task logs, Celery's own included, carries its batch id (and shard)."""
    if task is None or task.name not in (PREPARE_TASK, SHARD_TASK, FINALIZE_TASK) or not args:
        return
    structlog.contextvars.bind_contextvars(**task_ids(task.name, args))


def _unbind_task_ids(**_: Any) -> None:
    structlog.contextvars.unbind_contextvars("batch_id", "tenant", "shard")


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    svc = runtime.services
    signals.task_prerun.connect(_bind_task_ids, weak=False)
    signals.task_postrun.connect(_unbind_task_ids, weak=False)

    def redelivered(task: Task) -> bool:
        return bool((task.request.delivery_info or {}).get("redelivered")) or task.request.retries > 0

    # Storage or Redis outages are ridden out in the task (through_outages), so they cost time, never
    # an attempt; other errors retry through the broker, and shard attempts are bounded.
    @app.task(name=PREPARE_TASK, bind=True, max_retries=None)
    def prepare(self: Task, batch_id: str, tenant: str) -> None:
        try:
            through_outages(lambda: prepare_batch(svc, batch_id, tenant, runtime.worker_id), what="prepare")
        except PrepareBusy as e:
            raise self.retry(exc=e, countdown=BUSY_RETRY_S) from e
        except Exception as e:
            if self.request.retries >= MAX_PREPARE_RETRIES:
                log.exception("prepare keeps failing; failing the batch", batch_id=batch_id)
                fail_batch(svc, batch_id, tenant, "internal_error", f"the batch could not be prepared: {e}")
                return
            raise self.retry(exc=e, countdown=_backoff(self)) from e

    @app.task(name=SHARD_TASK, bind=True, max_retries=None)
    def shard(self: Task, *args: Any) -> None:
        try:
            ref = ShardRef.from_task_args(args)
        except ShardTooNew as e:
            log.warning("shard task of a newer version; leaving it for a newer worker", error=str(e))
            raise self.retry(exc=e, countdown=REFUSED_RETRY_S) from e
        except ValueError:
            log.error("a shard task message that names no shard is dropped", args=repr(args)[:300])
            return
        liveness = runtime.lease.liveness(self.request.id, runtime.loop) if runtime.lease else NoLiveness()
        try:
            run_shard(svc, runtime.loop, ref, model_name=runtime.model_name, worker=runtime.worker_id,
                      redelivered=redelivered(self), liveness=liveness)
        except ShardTooNew as e:
            log.warning("shard input of a newer version; leaving it for a newer worker", error=str(e))
            raise self.retry(exc=e, countdown=REFUSED_RETRY_S) from e
        except Exception as e:
            raise self.retry(exc=e, countdown=_backoff(self)) from e
        # Whatever the shard's outcome, its place in the model's fair share goes to the next shard.
        through_outages(lambda: svc.dispatch.shard_done(ref, runtime.model_name), what="fair queue")

    # Finalize only merges what is already stored; it retries (with backoff) until storage lets it.
    @app.task(name=FINALIZE_TASK, bind=True, max_retries=None)
    def finalize(self: Task, batch_id: str, tenant: str) -> None:
        try:
            through_outages(lambda: finalize_batch(svc, batch_id, tenant), what="finalize")
        except Exception as e:
            raise self.retry(exc=e, countdown=_backoff(self)) from e
