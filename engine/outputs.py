"""What the engine hands back for each request."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class TokenLogprob:
    """The log-probability of one generated token and the most likely alternatives at that step."""

    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class ToolCall:
    """One function call read out of an answer (engine/tool_formats.py): arguments as compact JSON text."""

    name: str
    arguments: str


@dataclass
class RequestMetrics:
    arrival_time: float  # time.time() when the engine accepted the request
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def total_time(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache (max over recomputations: first admission)
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None  # set when finish_reason == "error": what was wrong with the request
    # with error: invalid_request | context_length_exceeded | request_too_large | engine_error
    error_code: str | None = None
    metrics: RequestMetrics | None = None
    # an embedding request's vector (engine.pooling), set when it finished with "stop"; its token_ids stay empty
    embedding: list[float] | None = None
    # a request with tools: the calls its complete answer made ([] for a text answer; ``text`` is then the text
    # before the calls); None without tools or when the answer was cut before it was complete
    tool_calls: list[ToolCall] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def ok(self) -> bool:
        return self.finish_reason in ("stop", "length")
