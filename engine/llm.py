"""LLM: the offline API — a list of prompts in, their outputs (texts, or embeddings) back in the same order."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.inputs import Prompt
from pagebatch.engine.outputs import RequestOutput
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.sampling_params import SamplingParams

# The offline API's whole vocabulary from one module: `from pagebatch.engine.llm import LLM, SamplingParams`.
__all__ = ["LLM", "PoolingParams", "RequestOutput", "SamplingParams"]


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
        return self._run(prompts, params, SamplingParams, use_tqdm, "generate")

    def embed(
        self,
        prompts: Sequence[Prompt],
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One embedding per prompt (``output.embedding``), pooled as ``params`` or the checkpoint says."""
        return self._run(prompts, params, PoolingParams, use_tqdm, "embed")

    def _run(self, prompts, params, kind: type, use_tqdm: bool, desc: str) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt given bare
        if params is None or isinstance(params, kind):
            params = [params or kind()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} {kind.__name__} for {len(prompts)} prompts; pass one, or one per prompt")
        tag = uuid.uuid4().hex[:8]
        order = [self.engine.add_request(p, sp, request_id=f"{tag}-{i}") for i, (p, sp) in enumerate(zip(prompts, params))]
        results: dict[str, RequestOutput] = {}
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=len(order), desc=desc, unit="req")
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
