"""The scheduler's waiting requests, shared fairly between fairness keys (whom each request is for).

One FIFO per key. The next request to admit comes from the key whose *running* requests hold the least
work (a request's work: its prompt plus the most it may generate, ``Request.work``); keys with equal
work take turns. So one key's thousands of waiting requests cannot hold back another key's first one:
the newcomer holds no work yet and goes next. Requests without a key share the key ``""``, which makes
the queue plain first-come-first-served. The engine knows nothing of who the keys are.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping

from pagebatch.engine.request import Request


class FairWaitingQueue:
    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[Request]] = OrderedDict()  # key -> its waiting requests; turn order
        self._len = 0

    def append(self, req: Request) -> None:
        self._queue(req.fairness_key).append(req)
        self._len += 1

    def appendleft(self, req: Request) -> None:
        """Back to the head of its key's queue (a preempted or deferred request keeps its place)."""
        self._queue(req.fairness_key).appendleft(req)
        self._len += 1

    def remove(self, req: Request) -> None:
        queue = self._queues[req.fairness_key]
        queue.remove(req)
        self._len -= 1
        if not queue:
            del self._queues[req.fairness_key]

    def peek(self, running_work: Mapping[str, int]) -> Request | None:
        """The next request to admit: the head of the key whose running requests hold the least work."""
        if not self._queues:
            return None
        if len(self._queues) == 1:
            return next(iter(self._queues.values()))[0]
        key = min(self._queues, key=lambda k: running_work.get(k, 0))  # first in turn order among equals
        return self._queues[key][0]

    def pop(self, req: Request) -> None:
        """Take ``req`` (a head that ``peek`` returned) off the queue; its key's turn passes to the next key."""
        queue = self._queues[req.fairness_key]
        assert queue[0] is req
        queue.popleft()
        self._len -= 1
        if queue:
            self._queues.move_to_end(req.fairness_key)
        else:
            del self._queues[req.fairness_key]

    def keys(self) -> list[str]:
        return list(self._queues)

    def _queue(self, key: str) -> deque[Request]:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        return queue

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Request]:
        for queue in self._queues.values():
            yield from queue
