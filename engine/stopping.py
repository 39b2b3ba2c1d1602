"""When a request is done: the finish reason a newly appended token gives it, if any."""
from __future__ import annotations

import re

from pagebatch.engine.detokenizer import IncrementalDetokenizer
from pagebatch.engine.outputs import FinishReason
from pagebatch.engine.request import Request


GRAMMAR_ERROR = "grammar_error"  # the error_code of an answer its grammar could not complete


class GrammarFailed(Exception):
    """The grammar engine cannot continue a constrained answer: it refused the sampled token, or nothing but a
    premature end was left (a schema whose $refs form a cycle, a required self-recursion, a regex beyond its
    limits). The request ends with an error, never with "stop": "stop" promises a complete, valid answer."""

    code = GRAMMAR_ERROR


def stop_reason(req: Request, token: int, eos_token_ids: set[int], max_model_len: int | None) -> FinishReason | None:
    """``token`` has just been appended to ``req``; a label (choices) ends at its last token, whatever max_tokens says.
    A constrained answer (a grammar) ends when its grammar can take nothing but EOS, and raises GrammarFailed when
    the grammar engine cannot go on; EOS, stop_token_ids and stop strings have no say in it.

    Before ``min_tokens`` tokens were generated neither EOS nor stop_token_ids end a request (the sampler
    suppresses them; this guards that) and stop strings are not looked for (``MinTokensDetokenizer``).
    """
    p = req.params
    grammar = req.grammar_state
    if req.choice_state is not None:
        if req.choice_state.advance(token):
            return "stop"
    elif grammar is not None:
        if not grammar.accept(token) or grammar.error is not None:
            raise GrammarFailed(_grammar_failure(grammar.param, grammar.error, req.num_output_tokens))
        if grammar.is_terminated():
            return "stop"
        if req.num_output_tokens >= p.max_tokens:
            return "length"
    elif req.num_output_tokens > p.min_tokens and (
        (not p.ignore_eos and token in eos_token_ids) or token in p.stop_token_ids
    ):
        return "stop"
    elif req.detokenizer is not None and req.detokenizer.add(token) is not None:
        return "stop"
    elif req.num_output_tokens >= p.max_tokens:
        return "length"
    if max_model_len is not None and req.num_tokens >= max_model_len:
        return "length"
    return None


def _grammar_failure(param: str, error: str | None, num_tokens: int) -> str:
    reason = (error or "the sampled token was refused").strip().splitlines()[0]
    reason = re.sub(r"\s+", " ", reason)[:200]
    return (f"{param}: the answer cannot be completed within its constraint: after {num_tokens} tokens the grammar "
            f"engine stopped ({reason}). A schema whose $refs form a cycle or require themselves, or a regex or grammar "
            "whose repetitions exceed the engine's limits, cannot be satisfied: simplify it")


class MinTokensDetokenizer(IncrementalDetokenizer):
    """Stop strings are not looked for while the text has at most ``min_tokens`` tokens (vLLM's min_tokens);
    one that straddles that boundary is still found, since the search starts before the new text."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str], skip_special_tokens: bool,
                 min_tokens: int) -> None:
        super().__init__(tokenizer, prompt_token_ids, stop, skip_special_tokens)
        self.min_tokens = min_tokens
        self.num_added = 0

    def add(self, token_id: int) -> str | None:
        self.num_added += 1
        return super().add(token_id)

    def _find_stop(self, start: int) -> str | None:
        return None if self.num_added <= self.min_tokens else super()._find_stop(start)
