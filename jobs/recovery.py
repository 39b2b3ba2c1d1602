"""Rebuilds batches whose live state Redis lost (a restart without persistence) from storage.

Storage holds everything needed: batch.json, the shard manifest and each finished shard's results.
A batch listed under ``active/`` but missing from Redis is reloaded, and its unfinished work re-sent.
"""
from __future__ import annotations

import json
import threading

import redis

from jobs import layout
from jobs.logs import get_logger
from jobs.prepare import load_manifest
from jobs.progress import PREPARE_SHARD, maybe_finalize
from jobs.results import ShardResult
from jobs.schema import TERMINAL_STATUSES
from jobs.services import Services
from jobs.storage import NotFound

log = get_logger(__name__)


def sweep(svc: Services) -> int:
    """One pass over active batches; returns how many were restored."""
    restored = 0
    for key in svc.storage.list(layout.ACTIVE_PREFIX):
        batch_id = key.removeprefix(layout.ACTIVE_PREFIX)
        if svc.state.exists_live(batch_id):
            continue
        if not svc.redis.set(f"pb:restore:{batch_id}", "1", nx=True, ex=60):
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
    if record is None or record.status in TERMINAL_STATUSES:
        svc.state.forget_active(batch_id)
        return
    manifest = load_manifest(svc, tenant, batch_id)
    progress: dict[str, str] = {}
    done: list[str] = []
    shards = [] if manifest is None else [PREPARE_SHARD, *range(len(manifest.shards))]
    for shard in shards:
        key = (layout.prepare_result(tenant, batch_id) if shard == PREPARE_SHARD
               else layout.shard_result(tenant, batch_id, shard))
        try:
            result = ShardResult.from_bytes(svc.storage.get_bytes(key))
        except NotFound:
            continue
        done.append(str(shard))
        progress[str(shard)] = json.dumps({"completed": result.completed, "failed": result.failed})
    svc.state.load_live(record, progress, done)
    log.warning("restoring a batch lost from Redis", batch_id=batch_id, status=record.status, done=len(done))
    if manifest is None or record.num_shards is None:
        svc.dispatch.prepare(batch_id, tenant)  # prepare re-sends whatever shards are not done
        return
    if record.status == "finalizing":
        svc.dispatch.finalize(batch_id, tenant)
        return
    for plan in manifest.shards:
        if str(plan.index) not in done:
            svc.dispatch.shard(batch_id, tenant, plan.index, plan.model)
    maybe_finalize(svc, batch_id, tenant, len(done))


class Sweeper:
    """A daemon thread running :func:`sweep` every few seconds; one process at a time does the work."""

    def __init__(self, svc: Services, interval_s: float) -> None:
        self.svc, self.interval_s = svc, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pagebatch-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.svc.redis.set("pb:lock:sweep", "1", nx=True, ex=max(1, int(self.interval_s))):
                    sweep(self.svc)
            except (redis.RedisError, OSError) as e:
                log.warning("sweep skipped", error=repr(e))
            except Exception:
                log.exception("sweep failed")
