"""Rebuilds batches whose live state Redis lost (a restart without persistence) from storage.

Storage holds everything needed: batch.json, the shard manifest and each finished shard's results.
A batch listed under ``active/`` but missing from Redis is reloaded (with the shards whose results are
stored marked done, and the lines and tokens it had reserved of its tenant's quota), and its unfinished
work re-sent.
"""
from __future__ import annotations

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.lifecycle import BatchStatus
from pagebatch.jobs.batch.results import ShardResult
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.finalize import load_manifest, maybe_finalize
from pagebatch.jobs.pipeline.plan import dispatch_undone
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)


def sweep(svc: Services) -> int:
    """One pass over active batches; returns how many were restored."""
    restored = 0
    for key in svc.storage.list(layout.ACTIVE_PREFIX):
        batch_id = key.removeprefix(layout.ACTIVE_PREFIX)
        if svc.state.exists_live(batch_id):
            continue
        if not svc.redis.set(keys.named("restore", batch_id), "1", nx=True, ex=60):
            continue  # another process is restoring it
        try:
            tenant = svc.storage.get_bytes(key).decode()
        except NotFound:
            continue
        restore(svc, tenant, batch_id)
        restored += 1
    return restored


def restore(svc: Services, tenant: str, batch_id: str) -> None:
    record = svc.state.get_durable(tenant, batch_id)
    if record is None or lifecycle.is_terminal(record.status):
        svc.state.forget_active(batch_id)
        return
    manifest = load_manifest(svc, tenant, batch_id)
    finished: dict[int, tuple[int, int]] = {}
    for plan in manifest.shards if manifest is not None else []:
        try:
            result = ShardResult.from_bytes(svc.storage.get_bytes(layout.shard_result(tenant, batch_id, plan.index)))
        except NotFound:
            continue
        finished[plan.index] = (result.completed, result.failed)
    svc.state.load_live(record, finished)
    log.warning("restoring a batch lost from Redis", batch_id=batch_id, status=record.status, done=len(finished))
    if manifest is None or record.num_shards is None:
        svc.dispatch.prepare(batch_id, tenant)  # prepare re-sends whatever shards are not done
        return
    # Accepted already: counted again as it was, never refused.
    svc.quotas.reserve_enqueued(tenant, batch_id, manifest.enqueued(), svc.settings.quota_for(tenant), check=False)
    if record.status == BatchStatus.FINALIZING:
        svc.dispatch.finalize(batch_id, tenant)
        return
    dispatch_undone(svc, batch_id, tenant, manifest, frozenset(finished))
    maybe_finalize(svc, batch_id, tenant)
