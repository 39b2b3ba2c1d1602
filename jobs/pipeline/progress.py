"""Progress events of one batch, for the progress stream (Server-Sent Events) and the batches page.

Each poll reads what ``GET /v1/batches/{id}`` reads — the live record and its per-shard counts — plus the
finished shards (jobs/pipeline/finished_shards.py), whose usage records give the tokens so far. It yields a
``shard`` event per shard as it finishes and a ``progress`` snapshot (status, counts, tokens, tokens/s,
lines/s, ETA, the first errors) whenever something changed; the last event is the snapshot with the batch's
final status.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.rates import RateWindow, eta_seconds
from pagebatch.jobs.batch.results import ShardResult
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.bounded_cache import BoundedCache
from pagebatch.jobs.pipeline.finished_shards import FinishedShard, finished_shards
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.storage import NotFound

FIRST_ERRORS = 5
_STAMPS = ("created", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
_SUMMARIES_KEPT = 4096

Event = tuple[str, dict[str, Any]]  # (SSE event name, its data)


@dataclass(frozen=True)
class ShardSummary:
    """What the progress stream keeps of a finished shard: its counts, tokens and first errors."""

    completed: int
    failed: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    errors: tuple[tuple[int, str], ...]  # (input line, "custom_id: code: message"), the shard's first few

    @classmethod
    def of(cls, result: ShardResult) -> "ShardSummary":
        prompt = cached = completion = 0
        for _, text in result.usage:
            usage = json.loads(text)
            prompt, cached = prompt + usage["prompt_tokens"], cached + usage["cached_tokens"]
            completion += usage["completion_tokens"]
        errors = tuple((line, describe_error(text, line)) for line, text in result.in_line_order("errors")[:FIRST_ERRORS])
        return cls(result.completed, result.failed, prompt, cached, completion, errors)


def describe_error(text: str, line: int | None = None) -> str:
    """One error line as "custom_id: code: message" (a line without a custom_id is named by its number)."""
    row = json.loads(text)
    error = row.get("error") or ((row.get("response") or {}).get("body") or {}).get("error") or {}
    name = row.get("custom_id") or (f"line {line}" if line is not None else "a line without a custom_id")
    return f"{name}: {error.get('code')}: {error.get('message')}"


# shard results never change once a shard is done: each API process reads each one once
_summaries: BoundedCache[tuple[str, int | None], ShardSummary] = BoundedCache(_SUMMARIES_KEPT)


@dataclass
class ProgressWatch:
    """Follows one batch; ``poll`` returns the events since the last poll and whether the batch has ended."""

    svc: Services
    tenant: str
    batch_id: str
    # finished shards by index (None: the rejected lines); a summary is None when finalize removed the results first
    seen: dict[int | None, ShardSummary | None] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    rates: RateWindow | None = None

    def poll(self, now: float | None = None) -> tuple[list[Event], bool]:
        now = time.time() if now is None else now
        record = self.svc.state.get(self.tenant, self.batch_id)
        if record is None:
            return [], False  # being restored after a Redis loss: the sweeper brings it back
        ended = lifecycle.is_terminal(record.status)
        # shard events also on the poll that sees the end (the last shards may finish between two polls), but not for
        # a stream opened after the end: that one gets the final snapshot alone
        events = [] if ended and self.last is None else self._new_shards(record)
        snapshot = self._snapshot(record, now)
        if snapshot != self.last or ended:
            self.last = snapshot
            events.append(("progress", {**snapshot, "time": round(now, 3)}))
        return events, ended

    def _new_shards(self, record: BatchRecord) -> list[Event]:
        events = []
        for shard in finished_shards(self.svc, record):
            if shard.index in self.seen:
                continue
            try:
                summary: ShardSummary | None = _summaries.get((record.id, shard.index),
                                                              lambda s=shard: ShardSummary.of(s.load()))
            except NotFound:
                summary = None  # finalize merged and removed it already: the final record has the totals
            self.seen[shard.index] = summary
            if shard.index is None:
                continue  # the rejected lines: counted in the snapshot, not a shard
            events.append(("shard", {"batch_id": record.id, "shard": shard.index, "lines": shard.lines,
                                     "completed": summary.completed if summary else None,
                                     "failed": summary.failed if summary else None,
                                     "shards_done": sum(1 for i in self.seen if i is not None),
                                     "num_shards": record.num_shards}))
        return events

    def _snapshot(self, record: BatchRecord, now: float) -> dict[str, Any]:
        counts = record.request_counts
        if record.usage is not None and lifecycle.is_terminal(record.status):
            usage = {"input_tokens": record.usage.input_tokens,
                     "cached_tokens": record.usage.input_tokens_details.cached_tokens,
                     "output_tokens": record.usage.output_tokens}
        else:
            summaries = [s for s in self.seen.values() if s is not None]
            usage = {"input_tokens": sum(s.input_tokens for s in summaries),
                     "cached_tokens": sum(s.cached_tokens for s in summaries),
                     "output_tokens": sum(s.output_tokens for s in summaries)}
        done_lines = counts.completed + counts.failed
        if self.rates is None:
            self.rates = RateWindow(record.in_progress_at)
        self.rates.started_at = self.rates.started_at or record.in_progress_at  # once it has started
        if record.status == lifecycle.BatchStatus.IN_PROGRESS:
            self.rates.add(now, done_lines, usage["output_tokens"])
        rates = self.rates.rates()
        running = record.status in (lifecycle.BatchStatus.VALIDATING, lifecycle.BatchStatus.IN_PROGRESS)
        eta = eta_seconds(counts.total - done_lines, rates.lines_per_s) if running and counts.total else None
        return {
            "batch_id": record.id, "status": str(record.status), "model": record.model, "endpoint": record.endpoint,
            **{f"{stamp}_at": getattr(record, f"{stamp}_at") for stamp in _STAMPS},
            "request_counts": counts.model_dump(),
            "shards_done": sum(1 for i in self.seen if i is not None) if not lifecycle.is_terminal(record.status)
            else record.num_shards or 0,
            "num_shards": record.num_shards,
            "usage": usage,
            "lines_per_second": _round(rates.lines_per_s),
            "tokens_per_second": _round(rates.tokens_per_s),
            "eta_seconds": _round(eta),
            "first_errors": self._first_errors(record),
            "output_file_id": record.output_file_id, "error_file_id": record.error_file_id,
            "usage_file_id": record.usage_file_id,
            "errors": record.errors.model_dump()["data"] if record.errors else [],
        }

    def _first_errors(self, record: BatchRecord) -> list[str]:
        errors = sorted(e for s in self.seen.values() if s is not None for e in s.errors)[:FIRST_ERRORS]
        if not errors and lifecycle.is_terminal(record.status) and record.error_file_id:
            return first_errors_of_file(self.svc, record.tenant, record.error_file_id)
        return [text for _, text in errors]


def first_errors_of_file(svc: Services, tenant: str, file_id: str) -> list[str]:
    """The first few lines of an error file, described; what a stream opened after the batch ended shows."""
    try:
        head = b""
        for chunk in svc.files.content(tenant, file_id):
            head += chunk
            if head.count(b"\n") >= FIRST_ERRORS:
                break
    except NotFound:
        return []
    return [describe_error(line.decode()) for line in head.split(b"\n")[:FIRST_ERRORS] if line.strip()]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
