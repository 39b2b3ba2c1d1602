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

import numpy as np
import torch

from pagebatch.engine.request import Request, SampleLogprobs
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.structured import apply_masks


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
    """One request's inputs to the logits adjustments, kept so that a step costs O(its distinct tokens), not O(vocab).

    Built once by the request builder (on the submitting thread): the penalties, the biased token ids and
    values, the token ids min_tokens suppresses, and the prompt's distinct tokens (for the repetition
    penalty). ``sync`` folds the tokens generated since the last step in: the distinct generated tokens
    and their counts, and the generated tokens new to the prompt (numpy buffers, a dict lookup per new
    token). It is idempotent, so the row-by-row retry of a failed sampling step may sync twice.
    """

    def __init__(self, params: SamplingParams, prompt_token_ids: list[int], stop_ids: set[int]) -> None:
        self.presence = float(params.presence_penalty)
        self.frequency = float(params.frequency_penalty)
        self.repetition = float(params.repetition_penalty)
        self.counts_output = self.presence != 0 or self.frequency != 0
        self.tracks_output = self.counts_output or self.repetition != 1
        bias = params.logit_bias or {}
        self.bias_ids = np.fromiter(bias, dtype=np.int64, count=len(bias))
        self.bias_values = np.fromiter((float(v) for v in bias.values()), dtype=np.float32, count=len(bias))
        self.min_tokens = params.min_tokens
        self.suppress = np.array(sorted(stop_ids) if params.min_tokens else [], dtype=np.int64)
        # the distinct generated tokens (first appearance order) and their counts
        self._slot: dict[int, int] = {}
        self._tokens = np.empty(16, dtype=np.int64)
        self._counts = np.empty(16, dtype=np.float32)
        self._num_seen = 0  # generated tokens folded in so far
        # the prompt's distinct tokens, then each generated token new to the prompt: what repetition penalizes
        prompt = set(prompt_token_ids) if self.repetition != 1 else set()
        self._in_prompt = prompt
        self._seen = np.fromiter(prompt, dtype=np.int64, count=len(prompt))
        self._num_distinct_seen = len(prompt)

    def sync(self, req: Request) -> None:
        if not self.tracks_output:
            return
        if req.num_output_tokens < self._num_seen:  # never happens today; start over rather than trust the counts
            self._slot.clear()
            self._num_seen, self._num_distinct_seen = 0, len(self._in_prompt)
        for token in req.token_ids[req.num_prompt_tokens + self._num_seen :]:
            slot = self._slot.get(token)
            if slot is None:
                slot = self._slot[token] = len(self._slot)
                if slot == len(self._tokens):
                    self._tokens, self._counts = np.resize(self._tokens, 2 * slot), np.resize(self._counts, 2 * slot)
                self._tokens[slot], self._counts[slot] = token, 0
                if self.repetition != 1 and token not in self._in_prompt:
                    if self._num_distinct_seen == len(self._seen):
                        self._seen = np.resize(self._seen, max(16, 2 * len(self._seen)))
                    self._seen[self._num_distinct_seen] = token
                    self._num_distinct_seen += 1
            self._counts[slot] += 1
            self._num_seen += 1

    @property
    def output_tokens(self) -> np.ndarray:
        """The distinct generated tokens."""
        return self._tokens[: len(self._slot)]

    @property
    def output_counts(self) -> np.ndarray:
        return self._counts[: len(self._slot)]

    @property
    def seen_tokens(self) -> np.ndarray:
        """The distinct tokens of the prompt and the output, each once (for the repetition penalty)."""
        return self._seen[: self._num_distinct_seen]


def apply_logits_adjustments(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Penalties, logit_bias and min_tokens for the rows whose request has a LogitsState; never in place.

    repetition (vLLM / Hugging Face): a token seen in the prompt or the output has a positive logit
    divided by the penalty, a negative one multiplied; then frequency and presence (OpenAI):
    ``logits[t] -= frequency * count[t] + presence * (count[t] > 0)`` over the generated tokens; then
    logit_bias is added; then, while fewer than min_tokens were generated, EOS and stop_token_ids are -inf.
    Each is a gather/scatter over the (row, token) pairs it touches, gathered on the CPU into one index
    array and one value array that are copied to the device once: a step costs a copy of the logits plus
    O(distinct tokens of the adjusted rows), never O(rows x vocab) arithmetic.
    """
    rows = [i for i, r in enumerate(requests) if r.logits_state is not None]
    if not rows:
        return logits
    repetition, additive, suppressed = _Pairs(), _Pairs(), _Pairs()
    for i in rows:
        req = requests[i]
        s: LogitsState = req.logits_state
        s.sync(req)
        if s.repetition != 1:
            repetition.add(i, s.seen_tokens, s.repetition)
        if s.counts_output:
            additive.add(i, s.output_tokens, -(s.frequency * s.output_counts + s.presence))
        additive.add(i, s.bias_ids, s.bias_values)
        if req.num_output_tokens < s.min_tokens:
            suppressed.add(i, s.suppress, float("-inf"))
    groups = (repetition, additive, suppressed)
    sizes = [g.size for g in groups]
    if not any(sizes):
        return logits
    # one host-to-device copy for all the indices (every group's rows, then every group's tokens), one for the values
    indices = np.concatenate([g.rows() for g in groups] + [t for g in groups for t in g.tokens])
    values = np.concatenate([g.values() for g in groups])
    indices = torch.from_numpy(indices).to(logits.device)
    values = torch.from_numpy(values).to(device=logits.device, dtype=logits.dtype)
    total = sum(sizes)
    out = logits.clone()  # never in place: the row-by-row retry of a failed step re-reads the raw logits
    start = 0
    for group, size in zip(groups, sizes):
        if size:
            r, t, v = indices[start : start + size], indices[total + start : total + start + size], values[start : start + size]
            if group is repetition:  # each (row, token) once: the prompt's distinct tokens, then new generated ones
                current = out[r, t]
                out[r, t] = torch.where(current > 0, current / v, current * v)
            elif group is additive:  # penalties and logit_bias: a token may have both, so accumulate
                out.index_put_((r, t), v, accumulate=True)
            else:
                out[r, t] = v
        start += size
    return out


class _Pairs:
    """The (row, token) pairs one adjustment touches this step, with a value each (one per row, or per token)."""

    def __init__(self) -> None:
        self.row_ids: list[int] = []
        self.tokens: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self.size = 0

    def add(self, row: int, tokens: np.ndarray, value: float | np.ndarray) -> None:
        if len(tokens):
            self.row_ids.append(row)
            self.tokens.append(tokens)
            self._values.append(np.broadcast_to(np.float32(value), tokens.shape) if np.ndim(value) == 0 else value)
            self.size += len(tokens)

    def rows(self) -> np.ndarray:
        return np.repeat(np.array(self.row_ids, dtype=np.int64), [len(t) for t in self.tokens])

    def values(self) -> np.ndarray:
        return np.concatenate(self._values).astype(np.float32, copy=False) if self._values else np.empty(0, np.float32)


def sample(logits: torch.Tensor, requests: list[Request], allowed: list[list[int] | None] | None = None) -> list[SampledToken]:
    """logits: [N, V] float32, row i for requests[i]. Logprobs are reported from the model's raw distribution."""
    raw_logprobs = None
    want = [r.params.logprobs for r in requests]
    if any(k is not None for k in want):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
    raw = logits
    logits = apply_logits_adjustments(logits, requests)
    if allowed is not None:
        logits = apply_allowed_tokens(logits, allowed)
    grammars = [r.grammar_state for r in requests]
    if any(g is not None for g in grammars):
        # the grammar rows only; in place when the adjustments above already made a copy, else into a new tensor
        logits = apply_masks(logits, grammars, inplace=logits is not raw)

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
