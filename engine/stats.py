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
    # What this engine's work has cost, for estimates: seconds spent stepping since start, and a fit over recent
    # steps of seconds per prompt token computed and per token generated (None until enough steps were seen).
    busy_seconds_total: float = 0.0
    seconds_per_prompt_token: float | None = None
    seconds_per_generated_token: float | None = None
    block_size: int = 16


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


class StepCost:
    """Seconds per prompt token computed and per token generated, fit over recent steps.

    Least squares of ``seconds ~ a * prompt_tokens + b * generated_tokens`` over every step, older steps weighing
    less (half of the weight is the last ``half_life_steps`` steps'), so the fit follows the engine's current batch
    sizes. The per-step overhead lands in ``b``, as it does in a real run. When the steps cannot tell the two apart
    (always the same mix), one cost per token of either kind is fit instead.
    """

    MIN_STEPS = 8

    def __init__(self, half_life_steps: float = 2000.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life_steps)
        self.pp = self.pg = self.gg = self.pt = self.gt = 0.0
        self.steps = 0
        self.busy_s = 0.0

    def add(self, prompt_tokens: int, generated: int, seconds: float) -> None:
        d, p, g = self.decay, float(prompt_tokens), float(generated)
        self.pp, self.pg, self.gg = self.pp * d + p * p, self.pg * d + p * g, self.gg * d + g * g
        self.pt, self.gt = self.pt * d + p * seconds, self.gt * d + g * seconds
        self.steps += 1
        self.busy_s += seconds

    def coefficients(self) -> tuple[float, float] | None:
        """(seconds per prompt token, seconds per generated token), or None before enough steps."""
        if self.steps < self.MIN_STEPS or self.pp + self.gg <= 0:
            return None
        det = self.pp * self.gg - self.pg * self.pg
        if det > 1e-6 * self.pp * self.gg > 0:
            a = (self.pt * self.gg - self.gt * self.pg) / det
            b = (self.gt * self.pp - self.pt * self.pg) / det
            if a >= 0 and b >= 0:
                return a, b
            if a < 0:
                return 0.0, max(0.0, self.gt / self.gg)
            return max(0.0, self.pt / self.pp), 0.0
        both = (self.pt + self.gt) / (self.pp + 2 * self.pg + self.gg)
        return both, both


class StatsRecorder:
    """Accumulates what the engine reports in EngineStats, step by step."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.prompt_meter, self.generation_meter = RateMeter(), RateMeter()
        self.cached_prompt_tokens_total = 0
        self.num_steps = 0
        self.slot_utilization_sum = 0.0
        self.step_cost = StepCost()

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

    def record_step_time(self, batch, num_generated: int, seconds: float) -> None:
        """How long a whole step (schedule to update) took for its prefill tokens and generated tokens."""
        self.step_cost.add(batch.num_prompt_tokens, num_generated, seconds)

    def snapshot(self, scheduler) -> EngineStats:
        """The stats now, with the queue and pool state of ``scheduler`` (engine.scheduler.Scheduler)."""
        blocks = scheduler.blocks
        cached = blocks.num_cached_free_blocks
        cost = self.step_cost.coefficients()
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
            busy_seconds_total=self.step_cost.busy_s,
            seconds_per_prompt_token=None if cost is None else cost[0],
            seconds_per_generated_token=None if cost is None else cost[1],
            block_size=self.block_size,
        )
