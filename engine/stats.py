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


class StatsRecorder:
    """Accumulates what the engine reports in EngineStats, step by step."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.prompt_meter, self.generation_meter = RateMeter(), RateMeter()
        self.cached_prompt_tokens_total = 0
        self.num_steps = 0
        self.slot_utilization_sum = 0.0

    def record_step(self, batch, running: list) -> None:
        """A scheduled batch (engine.scheduler.ScheduledBatch) and the running requests after scheduling it."""
        self.num_steps += 1
        self.cached_prompt_tokens_total += batch.num_cached_tokens
        self.prompt_meter.add(batch.num_prompt_tokens)
        allocated = sum(len(r.block_table) for r in running) * self.block_size
        if allocated:
            live = sum(min(r.num_tokens, len(r.block_table) * self.block_size) for r in running)
            self.slot_utilization_sum += live / allocated

    def record_generated(self, num_tokens: int) -> None:
        self.generation_meter.add(num_tokens)

    def snapshot(self, scheduler) -> EngineStats:
        """The stats now, with the queue and pool state of ``scheduler`` (engine.scheduler.Scheduler)."""
        blocks = scheduler.blocks
        cached = blocks.num_cached_free_blocks
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            kv_blocks_total=blocks.num_blocks,
            kv_blocks_used=blocks.num_used_blocks,
            kv_blocks_cached=cached,
            kv_blocks_free=blocks.num_free_blocks - cached,
            prompt_tokens_total=self.prompt_meter.total,
            generation_tokens_total=self.generation_meter.total,
            cached_prompt_tokens_total=self.cached_prompt_tokens_total,
            prompt_tokens_per_s=self.prompt_meter.rate(),
            generation_tokens_per_s=self.generation_meter.rate(),
            num_preemptions=scheduler.num_preemptions,
            num_steps=self.num_steps,
            kv_slot_utilization=self.slot_utilization_sum / self.num_steps if self.num_steps else 0.0,
        )
