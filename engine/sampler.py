"""Turns each sampled row's logits into its next token, per-request parameters and generators.

Rows are independent: a row's token depends only on its logits, its request's parameters and its
own generator, so the engine can re-sample row by row to find a request that makes a batch fail.
The random noise is drawn last, after everything that could raise, so a failed batch has consumed
no generator state and the row-by-row retry samples what the batch would have.

Order per step: logits adjustments (repetition, frequency and presence penalties, logit_bias,
min_tokens; only the rows that use them, as a few batched tensor ops) -> the label mask of choices
-> greedy argmax, or temperature, top-k, top-p and the draw. Logprobs are the raw model's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Request, SampleLogprobs
from engine.sampling_params import SamplingParams


@dataclass
class SampledToken:
    token_id: int
    logprobs: SampleLogprobs | None  # when the request asked for logprobs


def apply_allowed_tokens(logits: torch.Tensor, allowed: list[list[int] | None]) -> torch.Tensor:
    """Mask every token outside a row's allowed set (rows with None are left alone)."""
    if all(a is None for a in allowed):
        return logits
    mask = torch.zeros_like(logits, dtype=torch.bool)
    for row, tokens in enumerate(allowed):
        if tokens is None:
            mask[row] = True
        else:
            mask[row, tokens] = True
    return logits.masked_fill(~mask, float("-inf"))


class LogitsState:
    """One request's inputs to the logits adjustments.

    Built once by the request builder (on the submitting thread, with tensors on the engine's device):
    the penalties, the prompt's distinct tokens (for the repetition penalty), the biased token ids and
    values, the token ids min_tokens suppresses. The sampler keeps the generated tokens as a tensor,
    extended each step by the tokens appended since (idempotent: the row-by-row retry may sync twice).
    """

    def __init__(self, params: SamplingParams, prompt_token_ids: list[int], stop_ids: set[int],
                 device: torch.device) -> None:
        self.presence = float(params.presence_penalty)
        self.frequency = float(params.frequency_penalty)
        self.repetition = float(params.repetition_penalty)
        self.counts_output = self.presence != 0 or self.frequency != 0 or self.repetition != 1
        self.prompt_tokens = None
        if self.repetition != 1:
            self.prompt_tokens = torch.tensor(sorted(set(prompt_token_ids)), dtype=torch.long, device=device)
        self.bias_ids = self.bias_values = None
        if params.logit_bias:
            self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
            self.bias_values = torch.tensor([float(v) for v in params.logit_bias.values()], device=device)
        self.min_tokens = params.min_tokens
        self.suppress = None
        if params.min_tokens and stop_ids:
            self.suppress = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
        self._output = torch.empty(16, dtype=torch.long)  # generated tokens (CPU), the first _num valid
        self._num = 0

    def output_tokens(self, req: Request) -> torch.Tensor:
        """The request's generated tokens so far (a CPU tensor)."""
        start = req.num_prompt_tokens
        if req.num_tokens - start < self._num:  # never happens today; start over rather than trust it
            self._num = 0
        new = req.token_ids[start + self._num :]
        if new:
            end = self._num + len(new)
            if end > len(self._output):
                grown = torch.empty(max(end, 2 * len(self._output)), dtype=torch.long)
                grown[: self._num] = self._output[: self._num]
                self._output = grown
            if len(new) == 1:
                self._output[self._num] = new[0]
            else:
                self._output[self._num : end] = torch.tensor(new, dtype=torch.long)
            self._num = end
        return self._output[: self._num]


def apply_logits_adjustments(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Penalties, logit_bias and min_tokens for the rows whose request has a LogitsState; never in place.

    repetition (vLLM / Hugging Face): a token seen in the prompt or the output has a positive logit
    divided by the penalty, a negative one multiplied; then frequency and presence (OpenAI):
    ``logits[t] -= frequency * count[t] + presence * (count[t] > 0)`` over the generated tokens; then
    logit_bias is added; then, while fewer than min_tokens were generated, EOS and stop_token_ids are -inf.
    """
    rows = [i for i, r in enumerate(requests) if r.logits_state is not None]
    if not rows:
        return logits
    states: list[LogitsState] = [requests[i].logits_state for i in rows]
    device = logits.device
    whole = len(rows) == len(requests)
    index = None if whole else torch.tensor(rows, device=device)
    sub = logits.clone() if whole else logits.index_select(0, index)
    num_rows, vocab = sub.shape

    counted = [k for k, s in enumerate(states) if s.counts_output]
    if counted:
        tokens = [states[k].output_tokens(requests[rows[k]]) for k in counted]
        counts = torch.zeros(num_rows, vocab, device=device)
        if any(len(t) for t in tokens):
            row_of = torch.repeat_interleave(torch.tensor(counted), torch.tensor([len(t) for t in tokens]))
            flat = torch.cat(tokens)
            counts.index_put_((row_of.to(device), flat.to(device)), torch.ones(len(flat), device=device),
                              accumulate=True)
        seen = counts > 0
        if any(s.repetition != 1 for s in states):
            prompts = [(k, s.prompt_tokens) for k, s in enumerate(states) if s.prompt_tokens is not None]
            prompt_rows = torch.repeat_interleave(torch.tensor([k for k, _ in prompts]),
                                                  torch.tensor([len(t) for _, t in prompts])).to(device)
            in_prompt = torch.zeros(num_rows, vocab, dtype=torch.bool, device=device)
            in_prompt[prompt_rows, torch.cat([t for _, t in prompts])] = True
            penalty = torch.tensor([s.repetition for s in states], device=device)[:, None]
            sub = torch.where(seen | in_prompt, torch.where(sub > 0, sub / penalty, sub * penalty), sub)
        if any(s.presence != 0 or s.frequency != 0 for s in states):
            coeffs = torch.tensor([[s.frequency, s.presence] for s in states], device=device)
            sub -= coeffs[:, :1] * counts + coeffs[:, 1:] * seen

    biased = [(k, s) for k, s in enumerate(states) if s.bias_ids is not None]
    if biased:
        bias_rows = torch.repeat_interleave(torch.tensor([k for k, _ in biased]),
                                            torch.tensor([len(s.bias_ids) for _, s in biased])).to(device)
        sub.index_put_((bias_rows, torch.cat([s.bias_ids for _, s in biased])),
                       torch.cat([s.bias_values for _, s in biased]), accumulate=True)

    short = [(k, s) for k, s in enumerate(states)
             if s.suppress is not None and requests[rows[k]].num_output_tokens < s.min_tokens]
    if short:
        short_rows = torch.repeat_interleave(torch.tensor([k for k, _ in short]),
                                             torch.tensor([len(s.suppress) for _, s in short])).to(device)
        sub[short_rows, torch.cat([s.suppress for _, s in short])] = float("-inf")

    return sub if whole else logits.index_copy(0, index, sub)


def sample(logits: torch.Tensor, requests: list[Request], allowed: list[list[int] | None] | None = None) -> list[SampledToken]:
    """logits: [N, V] float32, row i for requests[i]. Logprobs are reported from the model's raw distribution."""
    raw_logprobs = None
    want = [r.params.logprobs for r in requests]
    if any(k is not None for k in want):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
    logits = apply_logits_adjustments(logits, requests)
    if allowed is not None:
        logits = apply_allowed_tokens(logits, allowed)

    greedy = [r.params.greedy for r in requests]
    if all(greedy):
        chosen = logits.argmax(dim=-1)
    else:
        chosen = _sample_stochastic(logits, requests, greedy)
    logprobs = _gather_logprobs(raw_logprobs, chosen, want)
    return [SampledToken(token, lp) for token, lp in zip(chosen.tolist(), logprobs)]


def _sample_stochastic(logits: torch.Tensor, requests: list[Request], greedy: list[bool]) -> torch.Tensor:
    device = logits.device
    temps = torch.tensor([1.0 if g else r.params.temperature for r, g in zip(requests, greedy)], device=device)
    probs = torch.softmax(logits / temps[:, None], dim=-1)
    vocab = logits.shape[1]
    top_k = [min(r.params.top_k, vocab) if r.params.top_k > 0 else 0 for r in requests]
    top_p = [r.params.top_p for r in requests]
    if any(top_k) or any(p < 1.0 for p in top_p):
        probs = _filter_top_k_top_p(probs, top_k, top_p)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; each row's noise comes from its
    # own generator, so a seeded request samples the same tokens whatever else is in the batch.
    noise = torch.stack([torch.empty(probs.shape[1], device=device).exponential_(generator=r.generator) for r in requests])
    sampled = (probs / noise).argmax(dim=-1)
    greedy_rows = torch.tensor(greedy, device=device)
    return torch.where(greedy_rows, logits.argmax(dim=-1), sampled)


def _filter_top_k_top_p(probs: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    vocab = probs.shape[1]
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=probs.device)[None, :]
    k = torch.tensor([kk if kk > 0 else vocab for kk in top_k], device=probs.device)[:, None]
    p = torch.tensor(top_p, device=probs.device)[:, None]
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
    keep = (ranks < k) & (before < p)
    keep[:, 0] = True
    filtered = torch.zeros_like(probs)
    return filtered.scatter_(1, order, sorted_probs * keep)


def _gather_logprobs(raw: torch.Tensor | None, chosen: torch.Tensor, want: list[int | None]) -> list[SampleLogprobs | None]:
    if raw is None:
        return [None] * len(want)
    chosen_lp = raw.gather(1, chosen[:, None]).squeeze(1).tolist()
    k = min(max(w or 0 for w in want), raw.shape[1])
    top_vals, top_ids = (raw.topk(k, dim=-1) if k else (None, None))
    top_vals = top_vals.tolist() if k else None
    top_ids = top_ids.tolist() if k else None
    out: list[SampleLogprobs | None] = []
    for row, w in enumerate(want):
        if w is None:
            out.append(None)
        else:
            alts = list(zip(top_ids[row][:w], top_vals[row][:w])) if w else []
            out.append((chosen_lp[row], alts))
    return out
