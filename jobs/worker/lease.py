"""Keeps the broker from handing a still-running task to another worker, and lets a stuck one's go.

kombu's Redis transport re-queues any delivered-but-unacknowledged message whose entry in the
``unacked_index`` sorted set is older than the visibility timeout. A live worker refreshes the
entries of the messages it holds, so only a dead worker's messages ever age out: long shards are
never run twice, and a SIGKILLed worker's shards come back after about one visibility timeout.

A worker can also be alive, connected and stuck (an engine step that never returns, a wedged device).
So a running shard renews its lease only while it makes progress: its engine stepped since its last
poll, or it is waiting out a storage or Redis outage (:class:`ShardLiveness`). One that shows no
progress for the visibility timeout stops being renewed, and its message goes to another worker.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery import signals

from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.store.keys import UNACKED_INDEX

log = get_logger(__name__)


class LeaseKeeper:
    """Tracks the messages this worker holds; :meth:`renew` (called periodically) refreshes their entries."""

    def __init__(self, client: redis.Redis, stall_s: float = float("inf")) -> None:
        self.client = client
        self.stall_s = stall_s  # a watched task without progress this long is no longer renewed
        self._tags: dict[str, str] = {}  # task id -> delivery tag
        self._progress: dict[str, float] = {}  # watched task id -> when it last made progress (monotonic)
        self._stalled: set[str] = set()
        self._lock = threading.Lock()

    def install(self) -> "LeaseKeeper":
        signals.task_received.connect(self._on_received, weak=False)
        signals.task_postrun.connect(self._on_finished, weak=False)
        signals.task_revoked.connect(self._on_revoked, weak=False)
        return self

    def held(self) -> int:
        with self._lock:
            return len(self._tags)

    def liveness(self, task_id: str, loop: Any) -> "ShardLiveness":
        """Watch a running shard task: from now on its lease is renewed only while it reports progress."""
        self.progressed(task_id)
        return ShardLiveness(self, task_id, loop)

    def progressed(self, task_id: str) -> None:
        with self._lock:
            self._progress[task_id] = time.monotonic()
            self._stalled.discard(task_id)

    def _on_received(self, request: Any = None, **_: Any) -> None:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            with self._lock:
                self._tags[request.id] = tag

    def _on_finished(self, task_id: str | None = None, **_: Any) -> None:
        with self._lock:
            self._tags.pop(task_id or "", None)
            self._progress.pop(task_id or "", None)
            self._stalled.discard(task_id or "")

    def _on_revoked(self, request: Any = None, **_: Any) -> None:
        self._on_finished(getattr(request, "id", None))

    def renew(self) -> None:
        now = time.monotonic()
        with self._lock:
            tags, newly_stalled = [], []
            for task_id, tag in self._tags.items():
                last = self._progress.get(task_id)
                if last is not None and now - last > self.stall_s:
                    if task_id not in self._stalled:
                        self._stalled.add(task_id)
                        newly_stalled.append(task_id)
                    continue
                tags.append(tag)
        for task_id in newly_stalled:
            log.error("a running shard made no progress for the visibility timeout; its lease is no longer renewed, "
                      "so another worker will take it", task_id=task_id, stalled_s=round(self.stall_s, 1))
        if tags:
            # XX: only refresh entries that still exist, never resurrect an acknowledged message.
            self.client.zadd(UNACKED_INDEX, {tag: time.time() for tag in tags}, xx=True)


class ShardLiveness:
    """One running shard's progress reports (jobs/pipeline/shard.py ``Liveness``)."""

    def __init__(self, keeper: LeaseKeeper, task_id: str, loop: Any) -> None:
        self.keeper, self.task_id, self.loop = keeper, task_id, loop
        self._steps = self._engine_steps()

    def _engine_steps(self) -> int | None:
        return getattr(self.loop, "steps", None)

    def waiting(self) -> None:
        self.keeper.progressed(self.task_id)

    def polled(self) -> None:
        steps = self._engine_steps()
        if steps is None or steps != self._steps:
            self._steps = steps
            self.keeper.progressed(self.task_id)
