"""A request's life inside the engine: its tokens, blocks, progress and timings."""
from __future__ import annotations

import enum
import time

import torch

from engine.outputs import FinishReason, RequestMetrics, TokenLogprob
from engine.sampling import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + generated
        self.status = RequestStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # hashes of this request's full blocks, in order
        self.num_computed_tokens = 0
        self.num_cached_tokens: int | None = None  # prompt tokens served from cache at first admission
        self.num_preemptions = 0
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.text = ""
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.generator: torch.Generator | None = None
        self.metrics = RequestMetrics(arrival_time=time.time())
        self.detokenizer = None  # set by the engine when text is streamed (stop strings)
        self.choice_state = None  # set by the engine for requests restricted to choices

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
            f"blocks={len(self.block_table)}, status={self.status.value})"
        )
