"""Rotary position embeddings as a checkpoint's config describes them: the frequencies (computed by transformers' own
rope functions, so every scaling variant matches it exactly), one table per layer type where a family rotates its
layer types differently (Gemma 3: a local base for sliding-window layers), partial rotary (Phi-4-mini), and LongRoPE.

LongRoPE (Phi-3/Phi-4 128k) has two sets of frequencies. transformers picks one per forward call: the long ones
when the call's highest position is past ``original_max_position_embeddings``, the short ones otherwise. Over a
``generate``, a token is therefore rotated with the long frequencies exactly when its request's prompt is longer
than that, or when the token itself lies past it. The engine applies that rule per token (whatever the batch or
the chunking), by indexing a doubled table: position p of the short set is row p, of the long set row
max_positions + p (``rope_rows``). Keys cached under one rule are not what the other would compute, so the
prefix cache keeps the two apart (``prefix_salt``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagebatch.engine.models.errors import CheckpointError


@dataclass(frozen=True)
class RopeTable:
    inv_freq: torch.Tensor  # [rotary_dim / 2] float32
    attention_scaling: float  # multiplies cos and sin


@dataclass(frozen=True)
class RopeSpec:
    rotary_dim: int  # the leading dims of each head that rotate (head_dim unless partial)
    tables: tuple[RopeTable, ...]
    layer_tables: tuple[int, ...]  # each layer's table
    long: RopeTable | None = None  # LongRoPE: the frequencies past original_max_positions (tables[0] is the short set)
    original_max_positions: int | None = None

    def caches(self, max_positions: int, device: torch.device) -> list[torch.Tensor]:
        """One cos/sin cache [rows, rotary_dim] fp32 (cos halves then sin halves) per table; LongRoPE's holds the
        short rows, then the long ones."""
        caches = [_cos_sin(t, max_positions) for t in self.tables]
        if self.long is not None:
            caches[0] = torch.cat((caches[0], _cos_sin(self.long, max_positions)))
        return [c.to(device) for c in caches]

    def rows(self, max_positions: int, num_prompt_tokens: int, start: int, end: int) -> range | list[int]:
        """The cache rows of positions start..end-1 of a request with this many prompt tokens."""
        if self.long is None:
            return range(start, end)
        edge = self.original_max_positions
        if num_prompt_tokens > edge:
            return range(max_positions + start, max_positions + end)
        return [p + max_positions if p >= edge else p for p in range(start, end)]

    def prefix_salt(self, num_prompt_tokens: int) -> bytes:
        """What starts a request's block-hash chain: requests whose keys rotate alike share blocks."""
        return b"longrope" if self.long is not None and num_prompt_tokens > self.original_max_positions else b""


def _cos_sin(table: RopeTable, max_positions: int) -> torch.Tensor:
    freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * table.inv_freq[None, :]
    return torch.cat((freqs.cos() * table.attention_scaling, freqs.sin() * table.attention_scaling), dim=-1)


def read_rope(config, head_dim: int, layer_types: list[str] | None) -> RopeSpec:
    """The rope of a config; ``layer_types``: each layer's type when the config keys its rope parameters by it."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_types is not None and any(t in params for t in layer_types):
        kinds = sorted(set(layer_types))
        tables = tuple(_table(config, params[k], head_dim, layer_type=k) for k in kinds)
        dims = {_rotary_dim(params[k], head_dim) for k in kinds}
        if len(dims) != 1:
            raise CheckpointError(f"layer types rotate different head dims ({sorted(dims)}); not supported")
        if any(params[k].get("rope_type") == "longrope" for k in kinds):
            raise CheckpointError("rope_type 'longrope' per layer type is not supported")
        return RopeSpec(dims.pop(), tables, tuple(kinds.index(t) for t in layer_types))
    num_layers = config.num_hidden_layers
    rotary_dim = _rotary_dim(params, head_dim)
    if params.get("rope_type") == "longrope":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        edge = params.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", None)
        if not edge:
            raise CheckpointError("rope_type 'longrope' needs original_max_position_embeddings in config.json")
        short_freq, scaling = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
        long_freq, long_scaling = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=int(edge) + 1)
        return RopeSpec(rotary_dim, (RopeTable(short_freq.float(), float(scaling)),), (0,) * num_layers,
                        long=RopeTable(long_freq.float(), float(long_scaling)), original_max_positions=int(edge))
    return RopeSpec(rotary_dim, (_table(config, params, head_dim),), (0,) * num_layers)


def _rotary_dim(params: dict, head_dim: int) -> int:
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if dim % 2 or not 0 < dim <= head_dim:
        raise CheckpointError(f"partial_rotary_factor {params.get('partial_rotary_factor')} gives an unusable rotary dim {dim}")
    return dim


def _table(config, params: dict, head_dim: int, layer_type: str | None = None) -> RopeTable:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        dim = _rotary_dim(params, head_dim)
        return RopeTable(1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0)
    if rope_type == "dynamic":
        raise CheckpointError(f"rope_type {rope_type!r} changes with sequence length and is not supported")
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise CheckpointError(f"unknown rope_type {rope_type!r} in the config")
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", **kwargs)
    return RopeTable(inv_freq.float(), float(scaling))
