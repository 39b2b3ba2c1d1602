"""The one owner of request progress: which requests run each step, how many of their tokens, what
they have computed and generated, and when they finish. It alone drives the block manager.

One token budget per step. Running requests go first (decodes and unfinished prefill chunks, in
admission order), then waiting ones. Long prompts are prefilled in chunks. When the pool runs
out of blocks the newest running request is preempted: its blocks are released (their full
blocks stay in the prefix cache) and it is recomputed later from its prompt and the tokens it
had generated. After the step, ``update`` records what was computed and sampled.

A pooling (embedding) request is prefilled like any prompt but never sampled: ``update`` finishes it
once its whole prompt is computed. Unless it pools by the last token it reads nothing from the prefix
cache (engine.pooling says why).

Fair share: each request may carry a fairness key (whom it is for). Waiting requests are admitted from
the key whose running requests hold the least work (engine.fair_waiting). When the next one cannot be
admitted because the running set is full (or the pool is short of blocks), the newest running request
of the key holding the most work is preempted for it, as long as that key still holds at least as much
work afterwards as the newcomer's key: a key alone keeps everything, two keys converge on equal work, and
no two keys can preempt each other back and forth.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.fair_waiting import FairWaitingQueue
from pagebatch.engine.outputs import FinishReason
from pagebatch.engine.request import Request, RequestStatus
from pagebatch.engine.sampler import SampledToken
from pagebatch.engine.stopping import GrammarFailed, stop_reason


@dataclass
class ScheduledBatch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    # per request: this step reaches the end of its known tokens, so its next token is sampled
    # (False for every chunk of a chunked prefill but the last, and for pooling requests)
    sample: list[bool] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_prompt_tokens: int = 0  # tokens computed as prefill (prompts, and the output of recomputed requests)
    num_cached_tokens: int = 0  # prefix-cache hits of the requests admitted for the first time

    def add(self, req: Request, num_new: int) -> None:
        self.requests.append(req)
        self.num_new_tokens.append(num_new)
        self.sample.append(req.pooling is None and req.num_computed_tokens + num_new == req.num_tokens)
        if num_new != 1 or req.num_computed_tokens < req.num_prompt_tokens:
            self.num_prompt_tokens += num_new

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def sampled_requests(self) -> list[Request]:
        return [r for r, s in zip(self.requests, self.sample) if s]

    def subset(self, indices: Iterable[int]) -> ScheduledBatch:
        """The same step for some of its requests (to re-run a forward pass without the others)."""
        part = ScheduledBatch()
        for i in indices:
            part.requests.append(self.requests[i])
            part.num_new_tokens.append(self.num_new_tokens[i])
            part.sample.append(self.sample[i])
        return part

    def __bool__(self) -> bool:
        return bool(self.requests)


@dataclass
class FinishedRequest:
    request: Request
    reason: FinishReason
    error: str | None = None
    error_code: str | None = None  # see RequestOutput.error_code


class Scheduler:
    def __init__(
        self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
        eos_token_ids: set[int] | frozenset[int] = frozenset(), max_model_len: int | None = None,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.waiting = FairWaitingQueue()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- before the step ----------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        work = self._make_room_for_fair_share()
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
            batch.add(req, num_new)
            budget -= num_new
            i += 1
        if batch.preempted:
            return batch
        # Blocks being prefilled now: a waiting request whose next uncached block is one of them waits a step
        # and then reads it from the prefix cache (n choices of one prompt, or lines sharing an instruction).
        prefilling = self._prefilling_hashes(batch.requests)
        deferred: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting.peek(work)
            reads_cache = req.reads_prefix_cache
            hits = self.blocks.match_prefix(req) if reads_cache else []
            if reads_cache and self._waits_for(req, len(hits), prefilling):
                self.waiting.pop(req)
                deferred.append(req)  # keeps its place; the requests behind it go on
                continue
            num_cached = len(hits) * self.blocks.block_size
            num_new = min(req.num_tokens - num_cached, budget)
            if not self.blocks.can_admit(hits, num_cached + num_new):
                break
            self.waiting.pop(req)
            work[req.fairness_key] = work.get(req.fairness_key, 0) + req.work
            self.blocks.admit(req, hits, num_cached + num_new)
            req.num_computed_tokens = num_cached
            if req.num_cached_tokens is None:  # first admission
                req.num_cached_tokens = min(num_cached, req.num_prompt_tokens)
                req.metrics.first_scheduled_time = time.time()
                batch.num_cached_tokens += req.num_cached_tokens
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            batch.add(req, num_new)
            budget -= num_new
            prefilling |= self._prefilling_hashes([req])
        for req in reversed(deferred):
            self.waiting.appendleft(req)
        return batch

    def _running_work(self) -> dict[str, int]:
        work: dict[str, int] = {}
        for req in self.running:
            work[req.fairness_key] = work.get(req.fairness_key, 0) + req.work
        return work

    def _make_room_for_fair_share(self) -> dict[str, int]:
        """Before the step: preempt for the next waiting request if it is blocked and its key is owed room.

        At most one request per step, and only the newest running request of the key holding the most work,
        only while that key keeps at least the newcomer key's work (with the newcomer counted). Returns the
        running work per key, for the admission that follows."""
        work = self._running_work() if len(self.waiting.keys()) > 1 or self.running else {}
        if not self.waiting or not self.running:
            return work
        req = self.waiting.peek(work)
        if len(work) == 1 and req.fairness_key in work:
            return work  # one key: first come, first served
        if len(self.running) < self.max_num_seqs and self._fits(req):
            return work
        key = req.fairness_key
        heaviest = max(work, key=lambda k: work[k])
        if heaviest == key:
            return work
        victim = next(r for r in reversed(self.running) if r.fairness_key == heaviest)
        if work[heaviest] - victim.work < work.get(key, 0) + req.work:
            return work
        self.running.remove(victim)
        self._preempt(victim)
        work[heaviest] -= victim.work
        return work

    def _fits(self, req: Request) -> bool:
        """Whether the pool could admit the request's first chunk now."""
        hits = self.blocks.match_prefix(req) if req.reads_prefix_cache else []
        num_cached = len(hits) * self.blocks.block_size
        first = min(req.num_tokens - num_cached, self.max_num_batched_tokens)
        return self.blocks.can_admit(hits, num_cached + first)

    def _prefilling_hashes(self, requests: list[Request]) -> set[bytes]:
        if not self.blocks.enable_prefix_caching:
            return set()
        return {h for r in requests if r.num_computed_tokens < r.num_prompt_tokens for h in self.blocks.prefix_hashes(r)}

    def _waits_for(self, req: Request, num_hits: int, prefilling: set[bytes]) -> bool:
        hashes = self.blocks.prefix_hashes(req) if prefilling else []
        return num_hits < len(hashes) and hashes[num_hits] in prefilling

    def _preempt(self, req: Request) -> Request:
        self.blocks.release(req)
        req.num_computed_tokens = 0
        if req.pooling is not None:
            req.pooling.reset()
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1
        return req

    # -- after the step -----------------------------------------------------------------------------
    def update(
        self, batch: ScheduledBatch, sampled: dict[str, SampledToken], failed: dict[str, str] | None = None
    ) -> list[FinishedRequest]:
        """Record the step: the batch's tokens are computed, ``sampled`` tokens are appended (by request id),
        ``failed`` requests (id -> what went wrong) finish with an error, pooling requests whose prompt is computed
        finish (their hidden states were pooled already). Returns the requests that finished."""
        failed = failed or {}
        for req, num_new in zip(batch.requests, batch.num_new_tokens):
            if req.request_id not in failed:
                req.num_computed_tokens += num_new
                self.blocks.commit(req)
        finished = []
        for req, samples in zip(batch.requests, batch.sample):
            token = sampled.get(req.request_id)
            if req.request_id in failed or (samples and token is None):
                error = failed.get(req.request_id, "no token was sampled for this request")
                finished.append(self.finish(req, "error", error, "engine_error"))
            elif req.pooling is not None:
                if req.num_computed_tokens == req.num_tokens:
                    req.metrics.first_token_time = time.time()  # its one output: the vector
                    finished.append(self.finish(req, "stop"))
            elif token is not None:
                try:
                    reason = self._append(req, token)
                except GrammarFailed as exc:  # a constrained answer that cannot be completed: never "stop"
                    finished.append(self.finish(req, "error", str(exc), exc.code))
                    continue
                except Exception as exc:  # noqa: BLE001 - one request's bad state fails it alone
                    finished.append(self.finish(req, "error", f"the engine failed on this request: {exc!r}", "engine_error"))
                    continue
                if reason is not None:
                    finished.append(self.finish(req, reason))
        return finished

    def _append(self, req: Request, token: SampledToken) -> FinishReason | None:
        req.token_ids.append(token.token_id)
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = time.time()
        if token.logprobs is not None and req.logprobs is not None:
            req.logprobs.append(token.logprobs)
        reason = stop_reason(req, token.token_id, self.eos_token_ids, self.max_model_len)
        if reason is None and req.choice_state is not None and req.logprobs is None:
            # one label left and no choice on the way to its end: its remaining tokens need no forward pass
            # (with logprobs each token's probability needs its pass, so the answer goes on step by step)
            tail = req.choice_state.forced_tail()
            if tail:
                for forced in tail:
                    req.token_ids.append(forced)
                    req.choice_state.advance(forced)
                return "stop"
        return reason

    def abort(self, request_id: str) -> FinishedRequest | None:
        req = self.requests.get(request_id)
        return None if req is None else self.finish(req, "abort")

    def finish(
        self, req: Request, reason: FinishReason = "abort", error: str | None = None, error_code: str | None = None
    ) -> FinishedRequest:
        """Remove a finished, failed or aborted request wherever it is and release its blocks."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self.blocks.release(req)
        req.status = RequestStatus.FINISHED
        req.metrics.finished_time = time.time()
        self.requests.pop(req.request_id, None)
        return FinishedRequest(req, reason, error, error_code)
