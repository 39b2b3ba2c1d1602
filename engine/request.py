"""A request's life inside the engine: its tokens, blocks, progress and timings.

The scheduler is the one writer of its progress (status, blocks, computed and generated tokens);
the request builder sets its sampling state once, before the scheduler sees it.
"""
from __future__ import annotations

import enum
import time
from typing import Any

import torch

from pagebatch.engine.choices import ChoiceState
from pagebatch.engine.detokenizer import IncrementalDetokenizer
from pagebatch.engine.outputs import RequestMetrics
from pagebatch.engine.pooling import PoolingParams, PoolingState
from pagebatch.engine.sampling_params import SamplingParams

# One generated token's logprob and the top alternatives [(token_id, logprob), ...] at that step.
SampleLogprobs = tuple[float, list[tuple[int, float]]]


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        *,
        generator: torch.Generator | None = None,
        detokenizer: IncrementalDetokenizer | None = None,
        choice_state: ChoiceState | None = None,
        logits_state: Any = None,
        grammar_state: Any = None,
        pooling: PoolingState | None = None,
        tool_format: Any = None,
    ) -> None:
        self.request_id: str = request_id
        self.prompt_token_ids: list[int] = prompt_token_ids
        self.params: SamplingParams | PoolingParams = params  # PoolingParams exactly when ``pooling`` is set
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + generated
        self.status: RequestStatus = RequestStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # hashes of this request's full blocks, in order
        self.num_computed_tokens: int = 0
        self.num_cached_tokens: int | None = None  # prompt tokens served from cache at first admission
        self.num_preemptions: int = 0
        # one entry per generated token when params.logprobs is set
        self.logprobs: list[SampleLogprobs] | None = [] if getattr(params, "logprobs", None) is not None else None
        self.generator: torch.Generator | None = generator  # sampled (non-greedy) requests only
        self.detokenizer: IncrementalDetokenizer | None = detokenizer  # streams text when there are stop strings
        self.choice_state: ChoiceState | None = choice_state  # restricts the answer to one of params.choices
        # engine.sampler.LogitsState (penalties, logit_bias, min_tokens) when params.penalized, else None: the
        # sampler skips rows without one (typed Any: the sampler imports this module)
        self.logits_state: Any = logits_state
        # engine.structured.GrammarState when params.structured: masks the row's logits, ends it when complete
        self.grammar_state: Any = grammar_state
        # set for an embedding request: prefill only, never sampled; it finishes with its prompt computed
        self.pooling: PoolingState | None = pooling
        # engine.tool_formats.ToolFormat when params.tools: its calls are read out of the finished answer
        self.tool_format: Any = tool_format
        self.metrics: RequestMetrics = RequestMetrics(arrival_time=time.time())
        # Whom the request is for (a tenant): the scheduler shares its waiting queue fairly between keys.
        self.fairness_key: str = ""

    @property
    def reads_prefix_cache(self) -> bool:
        return self.pooling is None or self.pooling.reads_prefix_cache

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def work(self) -> int:
        """What the request may cost the engine, in tokens: its prompt plus the most it may generate."""
        return self.num_prompt_tokens + (0 if self.pooling is not None else int(getattr(self.params, "max_tokens", 0)))

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
