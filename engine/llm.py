"""LLM: the offline API — a list of prompts in, their outputs back in the same order."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.inputs import Prompt
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **engine_options) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt given bare
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts; pass one, or one per prompt")
        tag = uuid.uuid4().hex[:8]
        order = [self.engine.add_request(p, sp, request_id=f"{tag}-{i}") for i, (p, sp) in enumerate(zip(prompts, params))]
        results: dict[str, RequestOutput] = {}
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=len(order), desc="generate", unit="req")
        while len(results) < len(order):
            if not self.engine.has_unfinished_requests():
                raise RuntimeError("the engine stopped with requests outstanding; this is a bug, please report it")
            for out in self.engine.step():
                results[out.request_id] = out
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()
        return [results[rid] for rid in order]
