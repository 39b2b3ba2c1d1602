"""Per-request sampling parameters.

Construction never raises: a batch of user-supplied parameters is checked per request by
:meth:`SamplingParams.validate`, so one bad request fails alone. Every parameter has a bounded
range, so nothing a user sends can overflow a tensor or divide by zero in the shared sampling step:

- temperature: a finite number in [0, 2] (OpenAI's range); below 1e-5 it decodes greedily.
- top_p: a finite number in (0, 1]. top_k: -1 or 0 (off) or any positive integer (the sampler
  clamps it to the vocabulary).
- seed: an integer in int64's range [-2**63, 2**63); anything outside is rejected, not wrapped.
- max_tokens >= 1 (the context caps it); logprobs in [0, 20]; at most 16 stop strings of at most
  1024 characters, at most 1024 stop_token_ids; choices: 1 to 1024 non-empty strings of at most
  2048 characters each.

Each error message starts with the parameter's name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_LOGPROBS = 20
MAX_TEMPERATURE = 2.0
GREEDY_BELOW = 1e-5  # temperatures under this decode greedily: dividing logits by them overflows
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 2048
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 (or anything below GREEDY_BELOW) means greedy
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
        return self.temperature < GREEDY_BELOW

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ValueError naming the bad field and what would be accepted; never any other exception."""
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not _is_finite(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}], got {_show(self.temperature)}")
        if not _is_finite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {_show(self.top_p)}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (disabled) or a positive integer, got {_show(self.top_k)}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {_show(self.max_tokens)}")
        if self.seed is not None and (not _is_int(self.seed) or not INT64_MIN <= self.seed <= INT64_MAX):
            raise ValueError(f"seed must be an integer in [{INT64_MIN}, {INT64_MAX}], got {_show(self.seed)}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {_show(self.logprobs)}")
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {_show(getattr(self, name))}")
        self._validate_stops(vocab_size)
        if self.choices is not None:
            self._validate_choices()

    def _validate_stops(self, vocab_size: int | None) -> None:
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} stop strings are supported, got {len(self.stop)}")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters long")
        ids = self.stop_token_ids
        if not isinstance(ids, list) or len(ids) > MAX_STOP_TOKEN_IDS:
            raise ValueError(f"stop_token_ids must be a list of at most {MAX_STOP_TOKEN_IDS} token ids")
        if not all(_is_int(t) and t >= 0 and (vocab_size is None or t < vocab_size) for t in ids):
            raise ValueError(f"stop_token_ids must be token ids in [0, {vocab_size}), got {_show(ids)}")

    def _validate_choices(self) -> None:
        choices = self.choices
        if not isinstance(choices, list) or not choices:
            raise ValueError("choices must be a non-empty list of strings")
        if len(choices) > MAX_CHOICES:
            raise ValueError(f"choices: at most {MAX_CHOICES} choices are supported, got {len(choices)}")
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_CHARS for c in choices):
            raise ValueError(f"choices must each be a non-empty string of at most {MAX_CHOICE_CHARS} characters")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _show(value: object, limit: int = 60) -> str:
    """A bounded repr: a hostile value must not turn into a megabyte-long error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr raises is shown by its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
