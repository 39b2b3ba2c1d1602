"""pagebatch's inference engine: paged KV cache, prefix caching, continuous batching; generation and embeddings."""
from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.llm import LLM
from engine.loop import EngineDeadError, EngineLoop
from engine.models import CheckpointError
from engine.outputs import RequestMetrics, RequestOutput, TokenLogprob, TopLogprob
from engine.pooling import PoolingParams
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats

__all__ = [
    "LLM",
    "CheckpointError",
    "EngineConfig",
    "EngineDeadError",
    "EngineLoop",
    "EngineStats",
    "LLMEngine",
    "PoolingParams",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "TopLogprob",
]
