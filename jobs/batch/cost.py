"""What a validated line will cost the engine, estimated before any tokenizer sees it.

Two numbers per line, both in tokens:

- ``enqueued_tokens``: the prompt plus the most the line may generate (``n`` x max_tokens), OpenAI's
  measure for enqueued-token limits; what the per-tenant token quota counts.
- ``work``: ``n`` x (prompt + max_tokens), what the engine may have to compute for it (each choice is its own
  sequence); what fair share counts in the fair queue.

The prompt is counted at validation, where no tokenizer is at hand (a prepare task runs on any worker,
whatever model it serves): token-id prompts count exactly; text counts one token per 4 UTF-8 bytes, rounded
up, plus 4 per chat message for the template. Byte-level BPE tokenizers (Llama 3, Qwen, SmolLM) average 3.5
to 4.5 bytes per token on English text, so the estimate stays within about 15% of the truth there; on code,
other scripts or random bytes it under-counts, by up to 4x. For fair share only the ratio between lines matters, and
max_tokens (exact) usually dominates; for quotas the estimate is what the limit is stated in (docs/api.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # the role and the template's markers around each chat message


@dataclass(frozen=True)
class LineCost:
    prompt_tokens: int
    max_completion_tokens: int  # per choice (0 for embeddings)
    choices: int = 1

    @property
    def enqueued_tokens(self) -> int:
        return self.prompt_tokens + self.choices * self.max_completion_tokens

    @property
    def work(self) -> int:
        return self.choices * (self.prompt_tokens + self.max_completion_tokens)


def text_tokens(text: str) -> int:
    return max(1, -(-len(text.encode("utf-8", errors="replace")) // BYTES_PER_TOKEN))


def prompt_tokens(prompt: Any) -> int:
    """A prompt (text, token ids, chat messages) or an embedding input, in estimated tokens."""
    if isinstance(prompt, str):
        return text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        return sum(text_tokens(str(m.get("content", ""))) + TOKENS_PER_MESSAGE for m in prompt)
    if isinstance(prompt, list):
        return max(1, len(prompt))
    return 1


def line_cost(request: Any) -> LineCost:
    """The cost of a validated request: an ``EngineRequest`` (prompt, params, n) or an ``EmbeddingRequest``."""
    inputs = getattr(request, "inputs", None)
    if inputs is not None:  # embeddings: every input is prefilled, nothing is generated
        return LineCost(sum(prompt_tokens(item) for item in inputs), 0)
    return LineCost(prompt_tokens(request.prompt), int(request.params.max_tokens), int(request.n))
