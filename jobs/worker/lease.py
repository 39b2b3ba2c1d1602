"""Keeps the broker from handing a still-running task to another worker.

kombu's Redis transport re-queues any delivered-but-unacknowledged message whose entry in the
``unacked_index`` sorted set is older than the visibility timeout. A live worker refreshes the
entries of the messages it holds, so only a dead worker's messages ever age out: long shards are
never run twice, and a SIGKILLed worker's shards come back after about one visibility timeout.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import redis
from celery import signals

from pagebatch.jobs.store.keys import UNACKED_INDEX


class LeaseKeeper:
    """Tracks the messages this worker holds; :meth:`renew` (called periodically) refreshes their entries."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._tags: dict[str, str] = {}  # task id -> delivery tag
        self._lock = threading.Lock()

    def install(self) -> "LeaseKeeper":
        signals.task_received.connect(self._on_received, weak=False)
        signals.task_postrun.connect(self._on_finished, weak=False)
        signals.task_revoked.connect(self._on_revoked, weak=False)
        return self

    def held(self) -> int:
        with self._lock:
            return len(self._tags)

    def _on_received(self, request: Any = None, **_: Any) -> None:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            with self._lock:
                self._tags[request.id] = tag

    def _on_finished(self, task_id: str | None = None, **_: Any) -> None:
        with self._lock:
            self._tags.pop(task_id or "", None)

    def _on_revoked(self, request: Any = None, **_: Any) -> None:
        self._on_finished(getattr(request, "id", None))

    def renew(self) -> None:
        with self._lock:
            tags = list(self._tags.values())
        if tags:
            now = time.time()
            # XX: only refresh entries that still exist, never resurrect an acknowledged message.
            self.client.zadd(UNACKED_INDEX, {tag: now for tag in tags}, xx=True)

