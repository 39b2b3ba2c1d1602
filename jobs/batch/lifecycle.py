"""The batch state machine: the one place that knows the statuses and which event moves a batch where.

Callers name an event (``Event.CANCEL``); :func:`apply` checks it against the batch's status and
moves it, stamping ``<status>_at``. The live store runs it inside a compare-and-set transaction
(jobs/store/state.py); ``pagebatch run`` runs it on an in-memory record.
"""
from __future__ import annotations

import time
from enum import StrEnum
from typing import Protocol


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class Event(StrEnum):
    START = "start"  # validated and sharded: the shards may run
    CANCEL = "cancel"  # the owner asked to cancel
    FAIL = "fail"  # the input file cannot run at all
    FINALIZE = "finalize"  # every shard is done: merge the results
    COMPLETE = "complete"
    EXPIRE = "expire"  # the completion window ran out
    END_CANCELLED = "end_cancelled"  # a cancelled batch's finished results are merged


S = BatchStatus
# event -> {from status: to status}. START leaves a batch cancelled while validating cancelling.
TRANSITIONS: dict[Event, dict[BatchStatus, BatchStatus]] = {
    Event.START: {S.VALIDATING: S.IN_PROGRESS, S.CANCELLING: S.CANCELLING},
    Event.CANCEL: {S.VALIDATING: S.CANCELLING, S.IN_PROGRESS: S.CANCELLING},
    Event.FAIL: {S.VALIDATING: S.FAILED, S.CANCELLING: S.FAILED},
    Event.FINALIZE: {S.IN_PROGRESS: S.FINALIZING, S.CANCELLING: S.FINALIZING},
    Event.COMPLETE: {S.FINALIZING: S.COMPLETED},
    Event.EXPIRE: {S.FINALIZING: S.EXPIRED, S.VALIDATING: S.EXPIRED},
    Event.END_CANCELLED: {S.FINALIZING: S.CANCELLED, S.CANCELLING: S.CANCELLED},
}
# The shortcuts from validating/cancelling straight to expired/cancelled are for batches that were never
# prepared (no worker took them): nothing ran, so there is nothing to merge (jobs/pipeline/deadlines.py).
TERMINAL: frozenset[BatchStatus] = frozenset({S.FAILED, S.COMPLETED, S.EXPIRED, S.CANCELLED})
ACTIVE: tuple[BatchStatus, ...] = tuple(s for s in BatchStatus if s not in TERMINAL)


class HasStatus(Protocol):
    status: BatchStatus


def is_terminal(status: str | None) -> bool:
    return status in TERMINAL


def allowed(status: str, event: Event) -> bool:
    return status in TRANSITIONS[event]


def apply(record: HasStatus, event: Event, now: int | None = None) -> bool:
    """Move ``record`` by ``event``; False (and no change) if its status does not allow the event."""
    target = TRANSITIONS[event].get(BatchStatus(record.status))
    if target is None:
        return False
    if target != record.status:
        record.status = target
        setattr(record, f"{target}_at", int(time.time()) if now is None else now)
    return True


def concluding_event(cancel_requested: bool, expired: bool) -> Event:
    """How a finalizing batch ends: cancelled if its owner asked, expired if its window ran out, else completed."""
    return Event.END_CANCELLED if cancel_requested else Event.EXPIRE if expired else Event.COMPLETE
