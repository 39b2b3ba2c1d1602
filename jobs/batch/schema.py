"""Wire and storage shapes: OpenAI's Batch and File objects, and the per-request usage record."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from pagebatch.jobs.batch.lifecycle import BatchStatus

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS: tuple[str, ...] = (CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class Batch(BaseModel):
    """OpenAI's Batch object, plus ``usage_file_id`` (the per-request usage log)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus = BatchStatus.VALIDATING
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


class BatchRecord(Batch):
    """What batch.json holds: the public object plus the owner and the shard plan."""

    tenant: str
    num_shards: int | None = None  # set when the batch is prepared (with request_counts.total and rejected)
    rejected: int = 0  # lines refused at validation: failed before any shard ran
    cancel_requested: bool = False
    # Set only by S3 triggers, never from a request: the model for lines that name none, and the
    # s3://bucket/prefix/ the finished batch's files are copied to (see jobs/outbox.py).
    default_model: str | None = None
    outbox: str | None = None
    # output_expires_after.seconds: the result files are deleted this long after they are written.
    output_expires_after_s: int | None = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"tenant", "num_shards", "rejected", "cancel_requested",
                                                     "default_model", "outbox", "output_expires_after_s"})


FilePurpose = Literal["batch", "batch_output"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileRecord(FileObject):
    tenant: str

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"tenant"})


class UsageRecord(BaseModel):
    """One line of the per-request usage log: what a request cost and how long it took."""

    batch_id: str
    tenant: str
    custom_id: str | None
    model: str | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str
    queue_time: float | None = None
    time_to_first_token: float | None = None
    total_time: float | None = None
    worker: str | None = None
    line: int | None = None
