"""pagebatch's inference engine: paged KV cache, prefix caching, continuous batching."""
from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.llm import LLM
from engine.loop import EngineLoop
from engine.models import CheckpointError
from engine.outputs import RequestMetrics, RequestOutput, TokenLogprob, TopLogprob
from engine.sampling import SamplingParams
from engine.stats import EngineStats

__all__ = [
    "LLM",
    "CheckpointError",
    "EngineConfig",
    "EngineLoop",
    "EngineStats",
    "LLMEngine",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "TopLogprob",
]
