"""Turns each sampled row's logits into its next token, per-request parameters and generators.

Rows are independent: a row's token depends only on its logits, its request's parameters and its
own generator, so the engine can re-sample row by row to find a request that makes a batch fail.
The random noise is drawn last, after everything that could raise, so a failed batch has consumed
no generator state and the row-by-row retry samples what the batch would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Request, SampleLogprobs


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


def sample(logits: torch.Tensor, requests: list[Request], allowed: list[list[int] | None] | None = None) -> list[SampledToken]:
    """logits: [N, V] float32, row i for requests[i]. Logprobs are reported from the model's raw distribution."""
    raw_logprobs = None
    want = [r.params.logprobs for r in requests]
    if any(k is not None for k in want):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
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
