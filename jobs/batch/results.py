"""A shard's results: output lines, error lines and usage records, kept and stored together."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pagebatch.jobs.batch.ids import LineIds
from pagebatch.jobs.batch.line_errors import batch_error_line, request_error_line
from pagebatch.jobs.batch.schema import BatchUsage, UsageRecord

if TYPE_CHECKING:  # only named in annotations: results stay importable without the engine (the API's sweeper)
    from pagebatch.jobs.batch.validate import RejectedLine


class LineRef(Protocol):
    """What reporting a line that did not run needs of it (a ValidLine, a stored ShardLine, a SalvagedLine)."""

    line: int | None
    custom_id: str | None
    model: str | None


# Characters that str.splitlines() and other line splitters break on but JSON leaves unescaped.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_LINE_BREAKS_TABLE = str.maketrans(_LINE_BREAKS)


def jsonl_line(data: Any) -> str:
    """One JSON document on one line for every line splitter: UTF-8 text, line separators escaped."""
    return json.dumps(data, ensure_ascii=False).translate(_LINE_BREAKS_TABLE)


@dataclass
class RequestContext:
    """Who a request belongs to and where it runs: fields every usage record carries."""

    batch_id: str
    tenant: str
    worker: str


Entry = tuple[int, str]  # (the request's line in the input file, its JSONL text)


@dataclass
class ShardResult:
    """What one shard (or prepare's rejected lines) produced, each entry with its input line."""

    output: list[Entry] = field(default_factory=list)
    errors: list[Entry] = field(default_factory=list)
    usage: list[Entry] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    stopped: str | None = None  # "batch_cancelled" / "batch_expired" when the shard was cut short

    def add_output(self, line: dict[str, Any], usage: UsageRecord) -> None:
        self._add(self.output, line, usage)
        self.completed += 1

    def add_error(self, line: dict[str, Any], usage: UsageRecord) -> None:
        self._add(self.errors, line, usage)
        self.failed += 1

    def _add(self, entries: list[Entry], line: dict[str, Any], usage: UsageRecord) -> None:
        number = usage.line or 0
        entries.append((number, jsonl_line(line)))
        self.usage.append((number, jsonl_line(usage.model_dump(mode="json"))))

    def in_line_order(self, kind: str) -> list[Entry]:
        return sorted(getattr(self, kind))

    def usage_totals(self) -> "UsageTotals":
        """The sum of this result's usage records."""
        totals = UsageTotals()
        for _, text in self.usage:
            totals.add_line(text)
        return totals

    def add_rejected(self, ctx: RequestContext, rejected: RejectedLine) -> None:
        ids = LineIds.of(ctx.batch_id, rejected.line)
        self.add_error(request_error_line(ids, rejected.custom_id, rejected.error),
                       usage_record(ctx, rejected.line, rejected.custom_id, rejected.model, "error"))

    def add_not_run(self, ctx: RequestContext, job: LineRef, code: str, message: str, line: int = 0) -> None:
        """``line``: where to report a line whose own number could not be read (an unreadable shard's)."""
        number = job.line if job.line is not None else line
        ids = LineIds.of(ctx.batch_id, number)
        self.add_error(batch_error_line(ids, job.custom_id, code, message),
                       usage_record(ctx, number, job.custom_id, job.model, code))

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ShardResult":
        data = json.loads(raw)
        for kind in ("output", "errors", "usage"):
            data[kind] = [(int(n), text) for n, text in data[kind]]
        return cls(**data)


def usage_record(ctx: RequestContext, line: int, custom_id: str | None, model: str | None, finish_reason: str,
                 out: Any = None) -> UsageRecord:
    """The usage log's line for one request; ``out`` is the engine's RequestOutput when it ran (None: unbilled)."""
    record = UsageRecord(batch_id=ctx.batch_id, tenant=ctx.tenant, custom_id=custom_id, model=model,
                         finish_reason=finish_reason, worker=ctx.worker, line=line)
    if out is None:
        return record
    metrics = out.metrics
    scheduled = metrics is None or metrics.first_scheduled_time is not None
    record.prompt_tokens = out.num_prompt_tokens if scheduled else 0
    record.cached_tokens = min(out.num_cached_tokens, record.prompt_tokens)
    record.completion_tokens = len(out.token_ids)
    if metrics is not None:
        record.queue_time = _round(metrics.queue_time)
        record.time_to_first_token = _round(metrics.time_to_first_token)
        record.total_time = _round(metrics.total_time)
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class UsageTotals:
    """Sums usage records into the Batch object's usage block."""

    def __init__(self) -> None:
        self.prompt = self.cached = self.completion = 0

    def add(self, record: UsageRecord) -> None:
        self.prompt += record.prompt_tokens
        self.cached += record.cached_tokens
        self.completion += record.completion_tokens

    def merge(self, other: "UsageTotals") -> None:
        self.prompt += other.prompt
        self.cached += other.cached
        self.completion += other.completion

    def add_line(self, raw: str) -> None:
        data = json.loads(raw)
        self.prompt += data["prompt_tokens"]
        self.cached += data["cached_tokens"]
        self.completion += data["completion_tokens"]

    def as_batch_usage(self) -> BatchUsage:
        return BatchUsage.model_validate({
            "input_tokens": self.prompt, "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.completion, "total_tokens": self.prompt + self.completion,
        })
