"""When a request is done: the finish reason a newly appended token gives it, if any."""
from __future__ import annotations

from pagebatch.engine.detokenizer import IncrementalDetokenizer
from pagebatch.engine.outputs import FinishReason
from pagebatch.engine.request import Request


def stop_reason(req: Request, token: int, eos_token_ids: set[int], max_model_len: int | None) -> FinishReason | None:
    """``token`` has just been appended to ``req``; a label (choices) ends at its last token, whatever max_tokens says.

    Before ``min_tokens`` tokens were generated neither EOS nor stop_token_ids end a request (the sampler
    suppresses them; this guards that) and stop strings are not looked for (``MinTokensDetokenizer``).
    """
    p = req.params
    grammar = req.grammar_state
    if req.choice_state is not None:
        if req.choice_state.advance(token):
            return "stop"
    elif grammar is not None and (not grammar.accept(token) or grammar.is_terminated()):
        return "stop"  # the grammar is complete (or, never with its mask applied, refused the token)
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
