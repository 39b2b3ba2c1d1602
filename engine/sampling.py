"""Per-request sampling parameters.

Construction never raises: a batch of user-supplied parameters is checked per
request by :meth:`SamplingParams.validate`, so one bad request fails alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k filtering
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: sampled token plus k alternatives
    skip_special_tokens: bool = True
    # Restrict the answer to one of these strings (labeling); the engine decodes through a token trie.
    choices: list[str] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ValueError naming the bad field and what would be accepted."""
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not _is_number(self.temperature) or self.temperature < 0 or self.temperature > 100:
            raise ValueError(f"temperature must be a number in [0, 100], got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if len(self.stop) > 16:
            raise ValueError(f"at most 16 stop strings are supported, got {len(self.stop)}")
        if not all(_is_int(t) and t >= 0 and (vocab_size is None or t < vocab_size) for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids in [0, {vocab_size}), got {self.stop_token_ids!r}")
        if self.choices is not None:
            if not isinstance(self.choices, list) or not self.choices:
                raise ValueError("choices must be a non-empty list of strings")
            if not all(isinstance(c, str) and c for c in self.choices):
                raise ValueError("every choice must be a non-empty string")
            if len(self.choices) > 1024:
                raise ValueError(f"at most 1024 choices are supported, got {len(self.choices)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
