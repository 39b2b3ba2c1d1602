"""Turns user prompts into checked token ids: text, token ids, or chat messages (the tokenizer's template).

Work is bounded before it starts: a text longer than the context could hold at MAX_CHARS_PER_TOKEN
characters per token is rejected without tokenizing it. Anything the tokenizer or the template
raises (a lone surrogate such as "\\ud800" makes the tokenizer raise TypeError) becomes a PromptError.
"""
from __future__ import annotations

from typing import Any, Union

Prompt = Union[str, list[int], list[dict[str, Any]]]

# No tokenizer packs more characters than this into an average token of a real text.
MAX_CHARS_PER_TOKEN = 32


class RequestRejected(ValueError):
    """A request the engine will not run; ``code`` is machine-readable, the message says what to do."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code
        self.prompt_token_ids: list[int] = []  # when the prompt was tokenized before the rejection


class PromptError(RequestRejected):
    """A request's prompt cannot be served; the message says why."""


class PromptProcessor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        # A fast tokenizer's Rust backend encodes the same ids as the tokenizer's __call__, in half the time
        # and holding the GIL for less of it (the engine thread steps while callers prepare).
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    def token_ids(self, prompt: Prompt, leave: int = 1, tools: list[dict[str, Any]] | None = None) -> list[int]:
        """``leave``: context positions the prompt must leave free (1 for a generated token, 0 for an embedding).
        ``tools``: the chat template's ``tools`` argument (OpenAI's function tools), for chat messages only."""
        if isinstance(prompt, str):
            self._check_chars(len(prompt))
            ids = self._tokenize(prompt, add_special_tokens=True)
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = self.render_chat(prompt, tools)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            self._check_length(len(ids), leave)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise PromptError(f"token id {str(bad[0])[:40]} is outside the model's vocabulary [0, {self.vocab_size})")
        else:
            raise PromptError("a prompt must be a string, a list of token ids, or a list of chat messages")
        if not ids:
            raise PromptError("the prompt is empty; give at least one token")
        self._check_length(len(ids), leave)
        return ids

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Messages may carry OpenAI's ``tool_calls`` (assistant) and ``tool_call_id`` (role ``tool``) as well."""
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise PromptError(f"message {i} must have a string 'role' and a string 'content'")
        extra = sum(len(str(m.get("tool_calls") or "")) for m in messages) + len(str(tools or ""))
        self._check_chars(sum(len(m["role"]) + len(m["content"]) for m in messages) + extra)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise PromptError("this model's tokenizer has no chat template; send a plain text prompt instead")
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                      tokenize=False)
        except Exception as exc:  # noqa: BLE001 - template errors are the user's messages not fitting the template
            raise PromptError(f"the chat template could not render these messages: {exc}") from exc
        return self._tokenize(text, add_special_tokens=False)

    def _tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        try:
            if self._backend is not None:
                return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        except Exception as exc:  # noqa: BLE001 - whatever the text makes the tokenizer raise fails this request alone
            raise PromptError(
                f"the prompt could not be tokenized ({type(exc).__name__}); send valid Unicode text "
                "(lone surrogates such as \\ud800 cannot be encoded)"
            ) from exc

    def _check_chars(self, num_chars: int) -> None:
        if num_chars > self.max_model_len * MAX_CHARS_PER_TOKEN:
            raise PromptError(
                f"the prompt has {num_chars} characters, more than the model's context of {self.max_model_len} "
                "tokens can hold; shorten the prompt",
                code="context_length_exceeded",
            )

    def _check_length(self, num_tokens: int, leave: int) -> None:
        if num_tokens + leave > self.max_model_len:
            room = " and must leave room for at least one generated token" if leave else ""
            raise PromptError(
                f"the prompt has {num_tokens} tokens but the model's context is {self.max_model_len} tokens"
                f"{room}; shorten the prompt",
                code="context_length_exceeded",
            )
