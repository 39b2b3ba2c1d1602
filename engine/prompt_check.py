"""A checkpoint's prompt handling without its weights: what an estimate tokenizes with when no engine is loaded.

It reads only the tokenizer and config, and builds the same RequestBuilder the engine builds, so a prompt gets
the same chat template, tokenizer and checks as a submitted request. What it cannot check is whether a request
fits a KV pool (there is none here).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.inputs import Prompt
from pagebatch.engine.models import ModelSpec, load_hf_config, resolve_checkpoint
from pagebatch.engine.models.pooling_config import read_pooling
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.request_builder import RequestBuilder, RequestPlan
from pagebatch.engine.sampling_params import SamplingParams

_NO_POOL_LIMIT = 1 << 40  # blocks: no pool to fit


class PromptChecker:
    def __init__(self, builder: RequestBuilder) -> None:
        self.builder = builder

    @classmethod
    def from_checkpoint(cls, model: str, cache_dir: str | Path | None = None,
                        config: EngineConfig | None = None) -> "PromptChecker":
        from transformers import AutoTokenizer

        from pagebatch.engine.engine import _eos_token_ids, _max_model_len

        path = resolve_checkpoint(model, cache_dir)
        config = config or EngineConfig(model=str(path))
        hf_config = load_hf_config(path)
        spec = ModelSpec.from_hf_config(hf_config)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        builder = RequestBuilder(tokenizer, spec.vocab_size, _max_model_len(config, spec), _NO_POOL_LIMIT,
                                 config.block_size, _eos_token_ids(hf_config, tokenizer), torch.device("cpu"),
                                 config.seed, pooling=read_pooling(path, hf_config))
        return cls(builder)

    @property
    def block_size(self) -> int:
        return self.builder.block_size

    @property
    def max_model_len(self) -> int:
        return self.builder.max_model_len

    def plan_request(self, prompt: Prompt, params: SamplingParams | PoolingParams | None = None) -> RequestPlan:
        """Raises RequestRejected where the engine would reject the request."""
        return self.builder.plan(prompt, params if params is not None else SamplingParams())
