"""Embedding requests: run a prompt's prefill only and pool its final-norm hidden states into one vector.

A pooling request goes through the scheduler like any other (chunked prefill, continuous batching
beside generation), but nothing is ever sampled for it: when its last prompt token is computed it
finishes, its KV blocks are released and its output carries the vector.

- last (the default, vLLM's for decoders): the last prompt token's hidden state. Prefix-cache hits
  are fine, since the last token is always computed.
- mean: the average over every prompt token, summed chunk by chunk in float32. It needs every token's
  hidden state, so it reads nothing from the prefix cache (it still fills the cache for others).
- cls: the first token's hidden state; like mean, it skips the prefix cache.

Then the first ``dimensions`` values are kept (Matryoshka models only) and the vector is L2-normalized
unless asked not to be.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagebatch.engine.models.pooling_config import POOLING_METHODS, ModelPooling


@dataclass
class PoolingParams:
    """What an embedding request asks; ``None`` fields take what the checkpoint says (``ModelPooling``).
    Construction never raises: ``validate`` reports a bad value, naming the field."""

    dimensions: int | None = None  # keep the first this-many values (Matryoshka models only), then normalize
    normalize: bool | None = None
    pooling: str | None = None  # one of POOLING_METHODS

    def validate(self) -> None:
        if self.dimensions is not None and (not _is_int(self.dimensions) or self.dimensions < 1):
            raise ValueError(f"dimensions must be an integer >= 1, got {str(self.dimensions)[:40]}")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be a boolean, got {str(self.normalize)[:40]}")
        if self.pooling is not None and self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_METHODS)}, got {str(self.pooling)[:40]}")

    def resolve(self, model: ModelPooling, num_tokens: int) -> PoolingState:
        """This request's pooling on ``model``; ValueError naming the field the model cannot honour."""
        self.validate()
        if model.unsupported is not None:
            raise ValueError(f"this model's embeddings cannot be served: {model.unsupported}")
        dims = self.dimensions
        if dims is not None:
            if not model.matryoshka:
                raise ValueError("dimensions is not supported by this model: its config declares no Matryoshka "
                                 "dimensions, so a shortened vector would not be an embedding")
            if dims > model.hidden_size:
                raise ValueError(f"dimensions must be at most the model's embedding size {model.hidden_size}, got {dims}")
            if model.matryoshka_dimensions is not None and dims not in model.matryoshka_dimensions:
                raise ValueError(f"dimensions must be one of {list(model.matryoshka_dimensions)}, got {dims}")
        method = self.pooling or model.method
        normalize = model.normalize if self.normalize is None else self.normalize
        return PoolingState(method, normalize, dims, num_tokens)


class PoolingState:
    """One request's pooling in progress: which hidden states it needs, and what it gathered of them."""

    def __init__(self, method: str, normalize: bool, dimensions: int | None, num_tokens: int) -> None:
        self.method = method
        self.normalize = normalize
        self.dimensions = dimensions
        self.num_tokens = num_tokens
        self._sum: torch.Tensor | None = None  # float32: the mean's running sum, or the pooled row itself
        self._count = 0

    @property
    def reads_prefix_cache(self) -> bool:
        """Only last-token pooling may skip cached tokens: the others need the hidden state of token 0 on."""
        return self.method == "last"

    def positions(self, start: int, end: int) -> range:
        """The positions of the chunk [start, end) whose hidden states this pooling needs."""
        if self.method == "mean":
            return range(start, end)
        if self.method == "cls":
            return range(0, 1) if start == 0 < end else range(0)
        return range(end - 1, end) if end == self.num_tokens else range(0)

    def add(self, rows: torch.Tensor) -> None:
        """The final-norm hidden states [k, hidden] of ``positions`` of one computed chunk."""
        if rows.shape[0] == 0:
            return
        if self.method == "mean":
            total = rows.float().sum(dim=0)
            self._sum = total if self._sum is None else self._sum + total
            self._count += rows.shape[0]
        else:  # a copy: a view would keep the step's hidden states alive
            self._sum, self._count = rows[-1].to(torch.float32, copy=True), 1

    def reset(self) -> None:
        """The request was preempted: its prompt is computed again from the start."""
        self._sum, self._count = None, 0

    def result(self) -> list[float]:
        if self._sum is None:
            raise RuntimeError("no hidden state was pooled for this request")
        vector = self._sum / self._count if self.method == "mean" else self._sum
        if self.dimensions is not None:
            vector = vector[: self.dimensions]
        if self.normalize:
            vector = F.normalize(vector, dim=0)
        return vector.tolist()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
