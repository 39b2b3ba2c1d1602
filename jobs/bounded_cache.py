"""A small thread-safe cache of values that never change once written (a manifest, a finished shard's summary),
keeping the most recently used ``size`` of them."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The kept value, or ``load()``'s (kept unless None: a value that does not exist yet may exist later).
        Loads run outside the lock, so two threads may load one key at once; both get an equal value."""
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        value = load()
        if value is not None:
            with self._lock:
                self._kept[key] = value
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return value
