"""Decides, each step, which requests run and how many of their tokens.

One token budget per step. Running requests go first (decodes and unfinished prefill chunks, in
admission order), then waiting ones. Long prompts are prefilled in chunks. When the pool runs
out of blocks the newest running request is preempted: its blocks are released (their full
blocks stay in the prefix cache) and it is recomputed later from its prompt and the tokens it
had generated.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.kv_cache import BlockManager
from engine.request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.requests)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            target = req.num_computed_tokens + num_new
            while not self.blocks.can_grow(req, target) and self.running[-1] is not req:
                batch.preempted.append(self._preempt(self.running.pop()))
            if not self.blocks.can_grow(req, target):
                batch.preempted.append(self._preempt(self.running.pop()))
                break
            self.blocks.grow(req, target)
            batch.requests.append(req)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            i += 1
        if batch.preempted:
            return batch
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            hits = self.blocks.match_prefix(req)
            num_cached = len(hits) * self.blocks.block_size
            num_new = min(req.num_tokens - num_cached, budget)
            if not self.blocks.can_admit(hits, num_cached + num_new):
                break
            self.waiting.popleft()
            self.blocks.admit(req, hits, num_cached + num_new)
            req.num_computed_tokens = num_cached
            if req.num_cached_tokens is None:
                req.num_cached_tokens = min(num_cached, req.num_prompt_tokens)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            batch.requests.append(req)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        return batch

    def _preempt(self, req: Request) -> Request:
        self.blocks.release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1
        return req

    def finish(self, req: Request) -> None:
        """Remove a finished or aborted request wherever it is and release its blocks."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self.blocks.release(req)
        req.status = RequestStatus.FINISHED

    def live_requests(self) -> list[Request]:
        return [*self.running, *self.waiting]
