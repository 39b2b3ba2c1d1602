"""Turns a user's prompt and SamplingParams into a Request the scheduler can run, or rejects it.

Everything slow or fallible about a new request happens here, before the engine thread sees it:
checking its parameters, rendering the chat template (with a tool request's functions, in the model's own
tool-call format: engine/tool_formats.py), tokenizing (bounded first by the prompt's
length in characters), checking it fits the context and the KV pool, and building its generator,
stop-string detokenizer, label trie, grammar state and logits-adjustment tensors (penalties, logit_bias, min_tokens).
An embedding request (PoolingParams) gets its pooling state instead, checked against the checkpoint's pooling.
It is thread-safe, so ``EngineLoop.submit`` runs it on the caller's thread.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import torch

from pagebatch.engine.choices import ChoiceState, ChoiceTrie
from pagebatch.engine.detokenizer import IncrementalDetokenizer
from pagebatch.engine.inputs import Prompt, PromptProcessor, RequestRejected
from pagebatch.engine.models.pooling_config import ModelPooling
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.request import Request
from pagebatch.engine.sampler import LogitsState
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.stopping import MinTokensDetokenizer
from pagebatch.engine.structured import GrammarCompiler, GrammarSpec
from pagebatch.engine.tool_formats import ToolFormat, detect
from pagebatch.engine.tool_spec import ToolCalling

MAX_CACHED_TRIES = 256


@dataclass(frozen=True)
class RequestPlan:
    """What a request would take, known before it runs: its prompt's tokens, and the most tokens it may generate."""

    prompt_token_ids: list[int]
    max_new_tokens: int


class RequestBuilder:
    def __init__(
        self, tokenizer, vocab_size: int, max_model_len: int, num_blocks: int, block_size: int,
        eos_token_ids: set[int], device: torch.device, seed: int, *, pooling: ModelPooling | None = None,
        generates: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.eos_token_ids = eos_token_ids
        self.device = device
        self.pooling = pooling  # None: no embedding requests
        self.generates = generates  # False: a base model without a language-model head, embeddings only
        self.prompts = PromptProcessor(tokenizer, vocab_size, max_model_len)
        self._rng = random.Random(seed)  # seeds for unseeded sampled requests
        self._tries: dict[tuple[str, ...], ChoiceTrie] = {}
        self._tries_lock = threading.Lock()
        self.grammars = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)  # compiled once per spec (LRU)
        self._tool_format: ToolFormat | None = None

    @property
    def tool_format(self) -> ToolFormat:
        """The checkpoint's tool-call format, read off its chat template once."""
        if self._tool_format is None:
            self._tool_format = detect(self.tokenizer)
        return self._tool_format

    def tokenize(self, prompt: Prompt, params: SamplingParams | PoolingParams) -> list[int]:
        """The prompt's token ids as the request will run with them (chat template with a tool request's
        functions, tokenizer, length checks): the part of ``build`` that needs the tokenizer. RequestRejected
        for a prompt that cannot run."""
        if isinstance(params, PoolingParams):
            if self.pooling is None:
                raise RequestRejected("this engine serves no embeddings")
            return self.prompts.token_ids(prompt, leave=0)
        if not self.generates:
            raise RequestRejected("this model serves embeddings only: its checkpoint is a base model without a "
                                  "language-model head, so it cannot generate text; send embedding requests")
        prompt, template_tools = self._with_tools(prompt, _tool_calling(params))
        return self.prompts.token_ids(prompt, tools=template_tools)

    def build(self, request_id: str, prompt: Prompt | None, params: SamplingParams | PoolingParams,
              token_ids: list[int] | None = None) -> Request:
        """Raises RequestRejected (with the prompt's token ids when it got that far) for a request that cannot run.
        ``token_ids``: what ``tokenize`` made of the prompt already (in another process), so ``prompt`` is not read."""
        ids = token_ids if token_ids is not None else self.tokenize(prompt, params)
        if isinstance(params, PoolingParams):
            return self._build_pooling(request_id, ids, params)
        calling = _tool_calling(params)
        tool_format = None
        try:
            if not isinstance(params, SamplingParams):
                raise RequestRejected(f"params must be SamplingParams, got {type(params).__name__}")
            params.validate(self.vocab_size)
            choice_state, max_new_tokens = None, params.max_tokens
            if params.choices is not None:
                trie = self._choice_trie(tuple(params.choices))
                # a label ends at its last token (plus one closing token when it prefixes another)
                choice_state, max_new_tokens = ChoiceState(trie, min(self.eos_token_ids)), trie.depth + 1
            elif params.reject_over_context:
                self._check_context(len(ids), params.max_tokens)
            self._check_fits(len(ids), max_new_tokens)
            grammar_state = None if params.structured is None else self.grammars.new_state(params.structured)
            if calling is not None:
                tool_format = self.tool_format
                grammar_state = self.grammars.new_state(GrammarSpec("grammar", tool_format.grammar(calling), "tools"))
        except ValueError as exc:  # RequestRejected, or SamplingParams.validate's ValueError
            rejected = exc if isinstance(exc, RequestRejected) else RequestRejected(str(exc))
            rejected.prompt_token_ids = ids
            raise rejected from None
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        generator = None if params.greedy else torch.Generator(device=self.device).manual_seed(seed)
        detokenizer = None
        # a label ends at its last token and a grammar where it is complete: stop strings do not apply to either
        if params.stop and params.choices is None and grammar_state is None:
            if params.min_tokens:
                detokenizer = MinTokensDetokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens,
                                                   params.min_tokens)
            else:
                detokenizer = IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens)
        logits_state = None
        if params.penalized:
            stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
            logits_state = LogitsState(params, ids, stop_ids)
        return Request(request_id, ids, params, generator=generator, detokenizer=detokenizer,
                       choice_state=choice_state, logits_state=logits_state,
                       grammar_state=grammar_state, tool_format=tool_format)

    def _with_tools(self, prompt: Prompt, calling: ToolCalling | None) -> tuple[Prompt, list | None]:
        """Chat messages as the checkpoint's tool format renders them, and the template's ``tools`` argument."""
        is_chat = isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)
        if not is_chat:
            if calling is not None:
                raise RequestRejected("tools need a chat prompt (a list of messages)")
            return prompt, None
        has_calls = any(m.get("tool_calls") or m.get("role") == "tool" for m in prompt)
        if calling is None and not has_calls:
            return prompt, None
        if calling is not None:
            try:
                calling.validate()
            except ValueError as exc:
                raise RequestRejected(str(exc)) from None
        try:
            return self.tool_format.prepare(prompt, calling)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RequestRejected(f"a message with tool calls could not be read ({type(exc).__name__}: {exc}); "
                                  "send OpenAI's message shapes") from None

    def plan(self, prompt: Prompt, params: SamplingParams | PoolingParams) -> RequestPlan:
        """The request's plan after every check ``build`` makes (RequestRejected where it would reject it)."""
        ids = self.build("plan", prompt, params).prompt_token_ids
        if isinstance(params, PoolingParams):
            return RequestPlan(ids, 0)
        most = params.max_tokens if params.choices is None else self._choice_trie(tuple(params.choices)).depth + 1
        return RequestPlan(ids, max(0, min(most, self.max_model_len - len(ids))))

    def _build_pooling(self, request_id: str, ids: list[int], params: PoolingParams) -> Request:
        if self.pooling is None:
            raise RequestRejected("this engine serves no embeddings")
        try:
            state = params.resolve(self.pooling, len(ids))
            self._check_fits(len(ids), 0)
        except ValueError as exc:
            rejected = exc if isinstance(exc, RequestRejected) else RequestRejected(str(exc))
            rejected.prompt_token_ids = ids
            raise rejected from None
        return Request(request_id, ids, params, pooling=state)

    def _check_context(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """OpenAI's rule: the prompt plus max_tokens must fit the model's context (otherwise max_tokens is capped)."""
        if num_prompt_tokens + max_tokens > self.max_model_len:
            raise RequestRejected(
                f"this model's maximum context length is {self.max_model_len} tokens, but {num_prompt_tokens + max_tokens} "
                f"were requested ({num_prompt_tokens} in the prompt, {max_tokens} for the completion); "
                "lower max_tokens or shorten the prompt",
                code="context_length_exceeded",
            )

    def _check_fits(self, num_prompt_tokens: int, max_new_tokens: int) -> None:
        longest = min(num_prompt_tokens + max_new_tokens, self.max_model_len)
        if -(-longest // self.block_size) > self.num_blocks:
            raise RequestRejected(
                f"the request needs up to {longest} tokens of KV cache but the whole pool holds "
                f"{self.num_blocks * self.block_size}; lower max_tokens or shorten the prompt",
                code="request_too_large",
            )

    def _choice_trie(self, choices: tuple[str, ...]) -> ChoiceTrie:
        """Labeling jobs repeat one label set on every line: tokenize it once."""
        if not self.eos_token_ids:
            raise RequestRejected("choices need a model with an end-of-sequence token")
        with self._tries_lock:
            trie = self._tries.get(choices)
        if trie is not None:
            return trie
        try:
            sequences = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        except Exception as exc:  # noqa: BLE001 - e.g. a lone surrogate in a label
            raise RequestRejected(f"choices could not be tokenized ({type(exc).__name__}); send valid Unicode text") from exc
        if not all(sequences):
            raise RequestRejected("choices must each tokenize to at least one token")
        trie = ChoiceTrie(sequences)
        with self._tries_lock:
            if len(self._tries) >= MAX_CACHED_TRIES:
                self._tries.clear()
            self._tries[choices] = trie
        return trie


def _tool_calling(params: SamplingParams | PoolingParams) -> ToolCalling | None:
    return params.tools if isinstance(params, SamplingParams) and isinstance(params.tools, ToolCalling) else None
