"""The periodic sweep every worker and API process runs; one of them at a time does the work.

Each pass: rebuild batches Redis lost (recovery), keep the fair queue moving, end batches past
their window or cancelled that no worker is running (deadlines), and delete expired files. Each step
runs whatever the others did: a step that fails is logged, and the rest of the pass still runs.
"""
from __future__ import annotations

from collections.abc import Callable

from pagebatch.jobs.errors import OUTAGE_ERRORS
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.pipeline.deadlines import enforce_deadlines
from pagebatch.jobs.pipeline.recovery import sweep as restore_lost_batches
from pagebatch.jobs.services import Services
from pagebatch.jobs.store import keys
from pagebatch.jobs.store.queues import SHARD_TASK
from pagebatch.jobs.store.registry import known_models

log = get_logger(__name__)
UNSENT_AFTER_S = 30.0  # a shard released to the broker but not sent by then: its releaser died
LOST_AFTER_S = 30.0  # a shard sent this long ago with no message queued or delivered: the broker lost it


def keep_shards_moving(svc: Services) -> None:
    """Release what the fair queue can (a missed release only delays) and re-send lost releases and lost messages."""
    # A live shard's message is queued or unacked (kombu records a delivery right as it pops it); one that is
    # neither for this long was lost with the broker.
    for model in known_models(svc.redis):
        svc.dispatch.fair.resend_unsent(model, UNSENT_AFTER_S)
        svc.dispatch.fair.resend_lost(model, LOST_AFTER_S, SHARD_TASK, svc.state.shards.is_done)
        svc.dispatch.fair.release(model)


def sweep_once_per_interval(svc: Services, interval_s: float) -> None:
    """One process per interval sweeps (a short Redis lock), whichever worker or API process gets there first."""
    if not svc.redis.set(keys.SWEEP_LOCK, "1", nx=True, ex=max(1, int(interval_s))):
        return
    steps: list[tuple[str, Callable[[], object]]] = [
        ("recovery", lambda: restore_lost_batches(svc)),
        ("fair queue", lambda: keep_shards_moving(svc)),
        ("deadlines", lambda: enforce_deadlines(svc, grace_s=svc.settings.visibility_timeout)),
        ("expired files", lambda: svc.files.delete_expired()),
    ]
    for name, step in steps:
        try:
            step()
        except OUTAGE_ERRORS as e:
            log.warning("sweep step skipped: a dependency is unavailable", step=name, error=repr(e)[:300])
        except Exception:
            log.exception("sweep step failed; the rest of the sweep goes on", step=name)
