"""The end of a batch: count each finished shard once, start finalize exactly once, and merge the results.

A batch is ready to finalize when it is prepared (its plan recorded: ``num_shards``) and that many of its
shards are done (jobs/store/shard_ledger.py, the one record of "done"). Only the caller whose
compare-and-set moves the batch to ``finalizing`` sends the finalize task; finalize merges the stored
shard results (and prepare's rejected lines) into the output, error and usage files, and its own
terminal transition is compare-and-set too, so a re-run finalize changes nothing.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.conclusion import conclude, result_paths, write_result_files
from pagebatch.jobs.batch.ids import derived_file_id
from pagebatch.jobs.batch.lifecycle import BatchStatus, Event
from pagebatch.jobs.batch.manifest import Manifest
from pagebatch.jobs.batch.merge import Source
from pagebatch.jobs.batch.results import ShardResult
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.batch.shard_ref import ShardRef
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.outbox import publish as publish_outbox
from pagebatch.jobs.pipeline.webhooks import enqueue as enqueue_webhook
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import layout
from pagebatch.jobs.store.storage import NotFound

log = get_logger(__name__)

def load_manifest(svc: Services, tenant: str, batch_id: str) -> Manifest | None:
    try:
        return Manifest.from_bytes(svc.storage.get_bytes(layout.manifest(tenant, batch_id)))
    except NotFound:
        return None


def finish_shard(svc: Services, ref: ShardRef, *, completed: int, failed: int, redelivered: bool = False) -> None:
    """Record the shard done (its results are already in storage) and, if it was the last, start finalize.

    A redelivered shard task also re-sends finalize, in case its first run died between the two steps.
    """
    done = svc.state.shards.mark_done(ref, completed, failed)
    if done < 0:
        return  # the batch's live state was lost; the recovery sweeper rebuilds it from storage
    maybe_finalize(svc, ref.batch_id, ref.tenant, redelivered, done=done)


def maybe_finalize(svc: Services, batch_id: str, tenant: str, redelivered: bool = False, *,
                   done: int | None = None) -> None:
    """Start finalize if the batch is prepared and every shard is done (``done``: how many, when known)."""
    record = svc.state.get_live(batch_id)
    if record is None or record.num_shards is None:
        return
    if done is None:
        done = len(svc.state.shards.done(batch_id))
    if done < record.num_shards:
        return
    changed, record = svc.state.transition(batch_id, Event.FINALIZE)
    # Already finalizing but not by this call: a redelivered shard, or a retry of this one whose first try moved
    # the record (Redis) and then failed to store its copy (a storage outage) before it could send finalize.
    # ``done`` comes from marking the last shard, so either may have been first: send it again (finalize is
    # idempotent). The sweeper (``done`` None, not redelivered) does not.
    resend = redelivered or done is not None
    if changed or (resend and record is not None and record.status == BatchStatus.FINALIZING):
        log.info("all shards done; finalizing", batch_id=batch_id)
        svc.dispatch.finalize(batch_id, tenant)


def shard_results(svc: Services, tenant: str, batch_id: str, manifest: Manifest | None) -> list[Source]:
    """Prepare's rejected lines and every shard's results, each loaded only when the merge reaches it."""

    def load(key: str) -> Callable[[], ShardResult]:
        return lambda: ShardResult.from_bytes(svc.storage.get_bytes(key))

    sources: list[Source] = [(0, load(layout.prepare_result(tenant, batch_id)))]
    for plan in manifest.shards if manifest else []:
        sources.append((plan.first_line, load(layout.shard_result(tenant, batch_id, plan.index))))
    return sources


def finalize_batch(svc: Services, batch_id: str, tenant: str) -> None:
    record = svc.state.get_live(batch_id)
    if record is None or record.status != BatchStatus.FINALIZING:
        if record is not None and lifecycle.is_terminal(record.status):
            enqueue_webhook(svc, record)  # a retry after the enqueue failed (known events are ignored)
            publish_outbox(svc, record, only_if_missing=True)  # a retry after the outbox copy failed
        return  # lost from Redis (the sweeper restores it) or finalized already
    manifest = load_manifest(svc, tenant, batch_id)
    with tempfile.TemporaryDirectory(prefix="pagebatch-finalize-") as tmp:
        try:
            merged = write_result_files(shard_results(svc, tenant, batch_id, manifest), Path(tmp))
        except NotFound:
            if (svc.state.get_live(batch_id) or record).status != BatchStatus.FINALIZING:
                return  # another finalize finished first and cleaned up
            raise
        ids = {kind: _store(svc, record, kind, path) for kind, path in result_paths(Path(tmp)).items()}

    # cancel_requested cannot change while finalizing: the event chosen here is the one conclude names.
    event = lifecycle.concluding_event(record.cancel_requested, merged.expired)

    def record_results(r: BatchRecord) -> None:
        conclude(r, merged, ids)

    changed, finished = svc.state.transition(batch_id, event, record_results)
    if changed:
        log.info("batch finished", batch_id=batch_id, status=finished.status if finished else None,
                 completed=merged.completed, failed=merged.failed)
        svc.state.forget_active(batch_id)
        svc.storage.delete_prefix(layout.work_prefix(tenant, batch_id))
        if finished is not None:
            enqueue_webhook(svc, finished)  # only recorded in Redis; the workers' webhooks thread sends it
            publish_outbox(svc, finished)


def _store(svc: Services, record: BatchRecord, kind: str, path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as f:
        stored = svc.files.create(record.tenant, f"{record.id}_{kind}.jsonl", "batch_output", f, size,
                                  file_id=derived_file_id(record.id, kind),
                                  expires_after_s=record.output_expires_after_s)
    return stored.id
