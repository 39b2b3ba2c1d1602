"""Live engine statistics for schedulers, dashboards and /metrics."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_cached: int  # free blocks that still hold a reusable prefix
    kv_blocks_free: int
    prompt_tokens_total: int
    generation_tokens_total: int
    cached_prompt_tokens_total: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    num_preemptions: int
    num_steps: int
    kv_slot_utilization: float  # share of allocated slots holding live tokens, averaged over steps


class RateMeter:
    """Tokens per second over a sliding window."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.total += count
        self.events.append((now, count))
        while self.events and now - self.events[0][0] > self.window_s:
            self.events.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self.events and now - self.events[0][0] > self.window_s:
            self.events.popleft()
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1e-3)
        return sum(c for _, c in self.events) / span
