"""The periodic sweep every worker and API process runs; one of them at a time does the work.

Each pass: rebuild batches Redis lost (recovery), keep the fair queue moving, end batches past
their window or cancelled that no worker is running (deadlines), and delete expired files.
"""
from __future__ import annotations

from pagebatch.jobs.pipeline.deadlines import enforce_deadlines
from pagebatch.jobs.pipeline.recovery import sweep as restore_lost_batches
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys
from pagebatch.jobs.store.queues import SHARD_TASK
from pagebatch.jobs.store.registry import known_models

UNSENT_AFTER_S = 30.0  # a shard released to the broker but not sent by then: its releaser died
LOST_AFTER_S = 30.0  # a shard sent this long ago with no message queued or delivered: the broker lost it


def keep_shards_moving(svc: Services) -> None:
    """Release what the fair queue can (a missed release only delays) and re-send lost releases and lost messages."""
    # A live shard's message is queued or unacked (kombu records a delivery right as it pops it); one that is
    # neither for this long was lost with the broker.
    lost_after_s = LOST_AFTER_S
    for model in known_models(svc.redis):
        svc.dispatch.fair.resend_unsent(model, UNSENT_AFTER_S)
        svc.dispatch.fair.resend_lost(model, lost_after_s, SHARD_TASK,
                                      lambda batch_id, shard: svc.state.is_done(batch_id, str(shard)))
        svc.dispatch.fair.release(model)


def sweep_once_per_interval(svc: Services, interval_s: float) -> None:
    """One process per interval sweeps (a short Redis lock), whichever worker or API process gets there first."""
    if svc.redis.set(keys.SWEEP_LOCK, "1", nx=True, ex=max(1, int(interval_s))):
        restore_lost_batches(svc)
        keep_shards_moving(svc)
        enforce_deadlines(svc, grace_s=svc.settings.visibility_timeout)
        svc.files.delete_expired()
