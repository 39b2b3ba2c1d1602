"""Turns user prompts into checked token ids: text, token ids, or chat messages (the tokenizer's template)."""
from __future__ import annotations

from typing import Any, Union

Prompt = Union[str, list[int], list[dict[str, Any]]]


class RequestRejected(ValueError):
    """A request the engine will not run; ``code`` is machine-readable, the message says what to do."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class PromptError(RequestRejected):
    """A request's prompt cannot be served; the message says why."""


class PromptProcessor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    def token_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = self.render_chat(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise PromptError(f"token id {bad[0]} is outside the model's vocabulary [0, {self.vocab_size})")
        else:
            raise PromptError("a prompt must be a string, a list of token ids, or a list of chat messages")
        if not ids:
            raise PromptError("the prompt is empty; give at least one token")
        if len(ids) >= self.max_model_len:
            raise PromptError(
                f"the prompt has {len(ids)} tokens but the model's context is {self.max_model_len} tokens "
                "and must leave room for at least one generated token; shorten the prompt",
                code="context_length_exceeded",
            )
        return ids

    def render_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise PromptError(f"message {i} must have a string 'role' and a string 'content'")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise PromptError("this model's tokenizer has no chat template; send a plain text prompt instead")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - template errors are the user's messages not fitting the template
            raise PromptError(f"the chat template could not render these messages: {exc}") from exc
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
