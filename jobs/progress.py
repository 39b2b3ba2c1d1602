"""Shard completion bookkeeping: count each shard once, and start finalize exactly once."""
from __future__ import annotations

from jobs.logs import get_logger
from jobs.services import Services

log = get_logger(__name__)

PREPARE_SHARD = "prepare"  # rejected lines count as one extra "shard", done when prepare ends


def finish_shard(svc: Services, batch_id: str, tenant: str, shard: str, *, completed: int, failed: int,
                 redelivered: bool = False) -> None:
    """Record the shard (its results are already in storage) and, if it was the last, start finalize.

    Only the caller whose compare-and-set moves the batch to ``finalizing`` sends the finalize task;
    a redelivered shard task also re-sends it, in case its first run died between the two steps
    (finalize is idempotent, and its terminal status change is itself compare-and-set).
    """
    done = svc.state.mark_done(batch_id, shard, completed, failed)
    if done < 0:
        return  # the batch's live state was lost; the recovery sweeper rebuilds it from storage
    maybe_finalize(svc, batch_id, tenant, done, redelivered)


def maybe_finalize(svc: Services, batch_id: str, tenant: str, done: int, redelivered: bool = False) -> None:
    record = svc.state.get_live(batch_id)
    if record is None or record.num_shards is None or done < record.num_shards + 1:
        return
    changed, record = svc.state.transition(batch_id, {"in_progress", "cancelling"}, "finalizing")
    if changed or (redelivered and record is not None and record.status == "finalizing"):
        log.info("all shards done; finalizing", batch_id=batch_id)
        svc.dispatch.finalize(batch_id, tenant)
