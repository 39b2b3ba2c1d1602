"""A shard's results: output lines, error lines and usage records, kept and stored together."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from jobs.openai_format import batch_error_line, request_error_line, stable_id
from jobs.schema import BatchUsage, UsageRecord
from jobs.validate import RejectedLine, ValidLine


@dataclass
class RequestContext:
    """Who a request belongs to and where it runs: fields every usage record carries."""

    batch_id: str
    tenant: str
    worker: str


@dataclass
class ShardResult:
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    stopped: str | None = None  # "batch_cancelled" / "batch_expired" when the shard was cut short

    def add_output(self, line: dict[str, Any], usage: UsageRecord) -> None:
        self.output.append(json.dumps(line, ensure_ascii=False))
        self.usage.append(usage.model_dump_json())
        self.completed += 1

    def add_error(self, line: dict[str, Any], usage: UsageRecord) -> None:
        self.errors.append(json.dumps(line, ensure_ascii=False))
        self.usage.append(usage.model_dump_json())
        self.failed += 1

    def add_rejected(self, ctx: RequestContext, rejected: RejectedLine) -> None:
        line_id = stable_id("batch_req_", ctx.batch_id, rejected.line)
        request_id = stable_id("req_", ctx.batch_id, rejected.line)
        self.add_error(request_error_line(line_id, rejected.custom_id, request_id, rejected.error),
                       unbilled_usage(ctx, rejected.line, rejected.custom_id, rejected.model))

    def add_not_run(self, ctx: RequestContext, job: ValidLine, code: str, message: str) -> None:
        line_id = stable_id("batch_req_", ctx.batch_id, job.line)
        self.add_error(batch_error_line(line_id, job.custom_id, code, message),
                       unbilled_usage(ctx, job.line, job.custom_id, job.model, finish_reason=code))

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ShardResult":
        return cls(**json.loads(raw))


def unbilled_usage(ctx: RequestContext, line: int, custom_id: str | None, model: str | None,
                   finish_reason: str = "error") -> UsageRecord:
    return UsageRecord(batch_id=ctx.batch_id, tenant=ctx.tenant, custom_id=custom_id, model=model,
                       finish_reason=finish_reason, worker=ctx.worker, line=line)


class UsageTotals:
    """Sums usage records into the Batch object's usage block."""

    def __init__(self) -> None:
        self.prompt = self.cached = self.completion = 0

    def add(self, record: UsageRecord) -> None:
        self.prompt += record.prompt_tokens
        self.cached += record.cached_tokens
        self.completion += record.completion_tokens

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


@dataclass
class MergedCounts:
    completed: int = 0
    failed: int = 0
    expired: bool = False
    totals: UsageTotals = field(default_factory=UsageTotals)


def merge_results(results: Iterable[ShardResult], output: TextIO, errors: TextIO, usage: TextIO) -> MergedCounts:
    """Concatenate shard results into the three result files; count them and sum the usage log."""
    merged = MergedCounts()
    for result in results:
        for lines, sink in ((result.output, output), (result.errors, errors), (result.usage, usage)):
            for line in lines:
                sink.write(line + "\n")
        for line in result.usage:
            merged.totals.add_line(line)
        merged.completed += result.completed
        merged.failed += result.failed
        merged.expired = merged.expired or result.stopped == "batch_expired"
    return merged
