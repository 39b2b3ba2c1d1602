"""A prepared batch's plan, put to work: who may write a batch's shards, recording the plan, queueing the shards.

Free of the engine (no validation here), so the deadline sweep and recovery, which run in the API process
too, share it with prepare (jobs/pipeline/prepare.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.manifest import Manifest
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys
from pagebatch.jobs.store.fair_queue import ShardLoad

PREPARING_LOCK_S = 60  # renewed while lines are read; a dead holder's lock lapses this long after


class PrepareBusy(Exception):
    """Another process is writing this batch's shards right now: try again shortly."""


def start_batch(svc: Services, record: BatchRecord, manifest: Manifest) -> bool:
    """Record the plan on the batch and start it (once; a cancelled batch stays cancelling)."""

    def record_plan(r: BatchRecord) -> bool:
        if r.num_shards is not None:
            return False  # a redelivered prepare: the plan is recorded already
        r.num_shards, r.request_counts.total, r.model = len(manifest.shards), manifest.total, manifest.model
        r.rejected = manifest.rejected
        return True

    changed, _ = svc.state.transition(record.id, Event.START, record_plan)
    return changed


@contextmanager
def preparing(svc: Services, batch_id: str) -> Iterator[Callable[[], None]]:
    """Hold the batch's preparing lock (PrepareBusy if another process holds it); yields a renewal to call
    now and then."""
    key = keys.named("preparing", batch_id)
    if not svc.redis.set(key, "1", nx=True, ex=PREPARING_LOCK_S):
        raise PrepareBusy(batch_id)
    try:
        yield lambda: svc.redis.expire(key, PREPARING_LOCK_S)
    finally:
        svc.redis.delete(key)


def dispatch_undone(svc: Services, batch_id: str, tenant: str, manifest: Manifest,
                    done: frozenset[int] | None = None) -> None:
    """Queue every shard not done yet (a redelivery queues nothing twice: the fair queue dedupes)."""
    done = svc.state.shards.done(batch_id) if done is None else done
    for model in dict.fromkeys(plan.model for plan in manifest.shards):
        svc.dispatch.shards(model, [(manifest.ref(batch_id, tenant, plan), ShardLoad(plan.lines, plan.work))
                                    for plan in manifest.shards if plan.model == model and plan.index not in done])
