"""Per-request sampling parameters.

Construction never raises: a batch of user-supplied parameters is checked per request by
:meth:`SamplingParams.validate`, so one bad request fails alone. Every parameter has a bounded
range, so nothing a user sends can overflow a tensor or divide by zero in the shared sampling step:

- temperature: a finite number in [0, 2] (OpenAI's range); below 1e-5 it decodes greedily.
- top_p: a finite number in (0, 1]. top_k: -1 or 0 (off) or any positive integer (the sampler
  clamps it to the vocabulary).
- seed: an integer in int64's range [-2**63, 2**63); anything outside is rejected, not wrapped.
- max_tokens >= 1 (the context caps it, or with ``reject_over_context`` a prompt + max_tokens beyond
  the context is rejected as ``context_length_exceeded``, as OpenAI does); logprobs in [0, 20]; at
  most 16 stop strings of at most 1024 characters, at most 1024 stop_token_ids; choices: 1 to 1024
  non-empty strings of at most 2048 characters each.
- presence_penalty, frequency_penalty: finite numbers in [-2, 2] (OpenAI's semantics, over the
  generated tokens); repetition_penalty in (0, 2] (vLLM's / Hugging Face's, over prompt and generated
  tokens; 1 is off); logit_bias: at most 300 token ids of the vocabulary, each biased by a number in
  [-100, 100]; min_tokens: an integer in [0, max_tokens], not with choices (a label ends at its last token).
  Penalties and logit_bias with choices reweigh the labels: they apply before the label mask.

Each error message starts with the parameter's name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pagebatch.engine.structured import GrammarSpec
from pagebatch.engine.tool_spec import ToolCalling

MAX_LOGPROBS = 20
MAX_TEMPERATURE = 2.0
GREEDY_BELOW = 1e-5  # temperatures under this decode greedily: dividing logits by them overflows
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 2048
MAX_PENALTY = 2.0  # presence / frequency penalties: [-2, 2]; repetition penalty: (0, 2]
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_TOKENS = 300
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
    # Logits adjustments, applied to the rows that use them before temperature, top-k and top-p (and before
    # the label mask of choices), greedy rows included:
    presence_penalty: float = 0.0  # logits[t] -= presence_penalty when t was generated at least once
    frequency_penalty: float = 0.0  # logits[t] -= frequency_penalty * (times t was generated)
    repetition_penalty: float = 1.0  # t in prompt or output: positive logits divided by it, negative multiplied
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    min_tokens: int = 0  # EOS and stop_token_ids are suppressed, stop strings ignored, until this many tokens
    # False: max_tokens is capped by what the context leaves; True: prompt + max_tokens beyond the model's
    # context is rejected (context_length_exceeded, OpenAI's behaviour). Labels (choices) are exempt.
    reject_over_context: bool = False
    # Constrain the answer to a JSON schema, any JSON object, a regex, a label set or a grammar (engine/structured.py);
    # it ends when the grammar can take nothing but EOS. Stored shards hold it as a dict: __post_init__ rebuilds it.
    structured: GrammarSpec | None = None
    # Functions the answer may call (engine/tool_spec.py): rendered through the chat template, the answer constrained
    # to text or calls in the checkpoint's format (engine/tool_formats.py), the calls parsed into RequestOutput.
    tools: ToolCalling | None = None

    def __post_init__(self) -> None:
        self.structured = GrammarSpec.coerce(self.structured)  # never raises; validate() reports a bad value
        self.tools = ToolCalling.coerce(self.tools)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        """Whether any logits adjustment (penalties, logit_bias, min_tokens) applies."""
        return (self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
                or bool(self.logit_bias) or self.min_tokens > 0)

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
        for name in ("ignore_eos", "skip_special_tokens", "reject_over_context"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {_show(getattr(self, name))}")
        self._validate_stops(vocab_size)
        self._validate_penalties(vocab_size)
        if self.choices is not None:
            self._validate_choices()
            if self.min_tokens:
                raise ValueError("min_tokens cannot be combined with choices: a label ends at its last token")
        if self.structured is not None:
            if not isinstance(self.structured, GrammarSpec):
                raise ValueError(f"structured must be a GrammarSpec, got {_show(self.structured)}")
            self.structured.validate()
            param = self.structured.param
            if self.choices is not None:
                raise ValueError(f"{param}: give one output constraint; choices is set too")
            if self.min_tokens:
                raise ValueError(f"min_tokens cannot be combined with {param}: the grammar decides where the answer ends")
        if self.tools is not None:
            if not isinstance(self.tools, ToolCalling):
                raise ValueError(f"tools must be a ToolCalling, got {_show(self.tools)}")
            self.tools.validate()
            if self.structured is not None or self.choices is not None:
                raise ValueError("tools: give tools or an output constraint (response_format, structured_outputs, "
                                 "guided_*), not both")
            if self.min_tokens:
                raise ValueError("min_tokens cannot be combined with tools: the tool-call grammar decides where the "
                                 "answer ends")

    def _validate_penalties(self, vocab_size: int | None) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_finite(value) or not -MAX_PENALTY <= value <= MAX_PENALTY:
                raise ValueError(f"{name} must be a number in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {_show(value)}")
        if not _is_finite(self.repetition_penalty) or not 0 < self.repetition_penalty <= MAX_PENALTY:
            raise ValueError(f"repetition_penalty must be a number in (0, {MAX_PENALTY:g}], "
                             f"got {_show(self.repetition_penalty)}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {_show(self.min_tokens)}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be at most max_tokens ({self.max_tokens}), got {self.min_tokens}")
        bias = self.logit_bias
        if bias is None:
            return
        if not isinstance(bias, dict):
            raise ValueError(f"logit_bias must be a map of token ids to numbers, got {_show(bias)}")
        if len(bias) > MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"logit_bias: at most {MAX_LOGIT_BIAS_TOKENS} tokens can be biased, got {len(bias)}")
        for token, value in bias.items():
            if not _is_int(token) or token < 0 or (vocab_size is not None and token >= vocab_size):
                raise ValueError(f"logit_bias keys must be token ids in [0, {vocab_size}), got {_show(token)}")
            if not _is_finite(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias values must be numbers in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                                 f"got {_show(value)} for token {token}")

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
