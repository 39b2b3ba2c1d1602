"""Each compiled kernel an engine will use, run once on small inputs against its torch reference before it serves.

The first call of a Triton kernel on a card is where it compiles, and where a miscompile or an unsupported shape
shows; a kernel that raises or disagrees with ``kernels.reference`` beyond the dtype's tolerance is replaced by the
reference for the rest of the process, with one warning that names it. The probes use the model's own head and
hidden sizes (they decide the kernels' tile shapes), a handful of tokens, a mixed prefill/decode attention batch
(once per sliding window the model uses, once without), and, for a mixture of experts, the model's expert count and
top-k with the expert matrices capped at 256 wide.

The result is the backend to serve with (the same object when every kernel passed) and one ``CheckOutcome`` per op.
"""
from __future__ import annotations

import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from pagebatch.kernels import reference
from pagebatch.kernels.dispatch import KernelBackend
from pagebatch.kernels.metadata import AttentionMetadata

log = logging.getLogger(__name__)

# Largest error allowed, relative to the reference's largest magnitude (or 1, if smaller).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# Reference ops whose launches read no per-step host values: a fallback to them keeps CUDA graphs possible.
GRAPH_SAFE_REFERENCES = frozenset({"rms_norm", "rotary_embedding", "silu_and_mul", "gelu_tanh_and_mul", "write_kv"})
_MOE_CAP = 256


@dataclass(frozen=True)
class KernelShapes:
    """The sizes of one model that the probes use."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int
    intermediate_size: int
    block_size: int
    windows: tuple[int, ...] = ()  # the distinct sliding windows of its layers
    qk_norm_sizes: tuple[int, ...] = ()  # widths the q/k norms run over (head_dim, or all heads at once)
    moe: tuple[int, int, int] | None = None  # (experts, top_k, expert intermediate size)


@dataclass(frozen=True)
class CheckOutcome:
    op: str
    passed: bool
    detail: str  # the measured error, or why it failed

    def as_dict(self) -> dict:
        return {"op": self.op, "passed": self.passed, "detail": self.detail}


def check_backend(backend: KernelBackend, ops: list[str], shapes: KernelShapes, dtype: torch.dtype,
                  device: torch.device) -> tuple[KernelBackend, list[CheckOutcome]]:
    """Run every op of ``ops`` that the backend does not take from the reference; replace those that fail."""
    outcomes = [_check(op, getattr(backend.ops, op), shapes, dtype, device) for op in ops
                if getattr(backend.ops, op) is not getattr(reference, op, None)]
    failed = [o for o in outcomes if not o.passed]
    for o in failed:
        log.warning("kernel %s of the %s backend failed its self-check (%s); this process uses the torch reference "
                    "for it", o.op, backend.name, o.detail)
    if not failed:
        return backend, outcomes
    names = tuple(o.op for o in failed)
    ops_ns = types.SimpleNamespace(**{n: getattr(backend.ops, n) for n in dir(backend.ops) if not n.startswith("_")})
    for name in names:
        setattr(ops_ns, name, getattr(reference, name))
    graphs = backend.supports_cuda_graphs and all(n in GRAPH_SAFE_REFERENCES for n in names)
    return replace(backend, ops=ops_ns, supports_cuda_graphs=graphs, fallbacks=backend.fallbacks + names), outcomes


def _check(op: str, fn: Callable, shapes: KernelShapes, dtype: torch.dtype, device: torch.device) -> CheckOutcome:
    probe = _PROBES.get(op)
    if probe is None:
        return CheckOutcome(op, True, "no probe")
    try:
        worst = 0.0
        for got, want in probe(fn, getattr(reference, op), shapes, dtype, device):
            worst = max(worst, _error(got, want))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - a compile error, a launch failure, a shape it refuses: all fail it
        return CheckOutcome(op, False, f"{type(exc).__name__}: {str(exc)[:300]}")
    tol = TOLERANCE.get(dtype, 5e-2)
    if not worst <= tol:  # also catches NaN
        return CheckOutcome(op, False, f"differs from the reference by {worst:.3g} (tolerance {tol:g})")
    return CheckOutcome(op, True, f"max error {worst:.3g}")


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise ValueError(f"shape {tuple(got.shape)}, the reference gives {tuple(want.shape)}")
    got, want = got.float(), want.float()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    return (got - want).abs().max().item() / scale if want.numel() else 0.0


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)


def _probe_rms_norm(fn, ref, s: KernelShapes, dtype, device):
    gen = torch.Generator().manual_seed(0)
    for width in (s.hidden_size, *s.qk_norm_sizes):
        x = _randn(gen, 5, width, dtype=dtype, device=device, scale=3.0)
        res = _randn(gen, 5, width, dtype=dtype, device=device)
        w = (torch.rand(width, generator=gen) + 0.5).to(dtype).to(device)
        yield fn(x, w, 1e-6), ref(x, w, 1e-6)
        (a, a_sum), (b, b_sum) = fn(x, w, 1e-6, res), ref(x, w, 1e-6, res)
        yield a, b
        yield a_sum, b_sum


def _probe_rotary(fn, ref, s: KernelShapes, dtype, device):
    gen = torch.Generator().manual_seed(1)
    qkv = _randn(gen, 6, s.num_heads + 2 * s.num_kv_heads, s.head_dim, dtype=dtype, device=device)
    q, k = qkv[:, : s.num_heads, : s.rotary_dim], qkv[:, s.num_heads : s.num_heads + s.num_kv_heads, : s.rotary_dim]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, s.rotary_dim, 2, dtype=torch.float) / s.rotary_dim))
    freqs = torch.arange(64, dtype=torch.float)[:, None] * inv_freq[None, :]
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)
    positions = torch.tensor([0, 1, 17, 63, 5, 40], device=device)
    for a, b in zip(fn(positions, q, k, cache), ref(positions, q, k, cache)):
        yield a, b


def _probe_activation(fn, ref, s: KernelShapes, dtype, device):
    gen = torch.Generator().manual_seed(2)
    widths = {s.intermediate_size} | ({min(s.moe[2], _MOE_CAP)} if s.moe else set())
    for inter in sorted(widths):
        x = _randn(gen, 6, 2 * inter, dtype=dtype, device=device, scale=3.0)
        yield fn(x), ref(x)


def _probe_write_kv(fn, ref, s: KernelShapes, dtype, device):
    gen = torch.Generator().manual_seed(3)
    shape = (4, s.block_size, s.num_kv_heads, s.head_dim)
    k_cache, v_cache = _randn(gen, *shape, dtype=dtype, device=device), _randn(gen, *shape, dtype=dtype, device=device)
    key = _randn(gen, 6, s.num_kv_heads, s.head_dim, dtype=dtype, device=device)
    value = _randn(gen, 6, s.num_kv_heads, s.head_dim, dtype=dtype, device=device)
    slots = torch.randperm(4 * s.block_size, generator=gen)[:6].to(device)
    k_want, v_want, k_got, v_got = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    fn(key, value, k_got, v_got, slots)
    ref(key, value, k_want, v_want, slots)
    yield k_got, k_want
    yield v_got, v_want


def _attention_batch(s: KernelShapes, dtype, device, gen: torch.Generator):
    """A prefill chunk after a cached prefix, a whole short prompt and two decodes, in shuffled blocks."""
    specs = [(37, 5), (9, 9), (20, 1), (3 * s.block_size + 1, 1)]  # (context, queries)
    bs = s.block_size
    per_seq = [-(-ctx // bs) for ctx, _ in specs]
    num_blocks = sum(per_seq) + 1
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = torch.zeros(len(specs), max(per_seq), dtype=torch.int32)
    slots = []
    for i, ((ctx, q_len), n) in enumerate(zip(specs, per_seq)):
        blocks = [order.pop() for _ in range(n)]
        tables[i, :n] = torch.tensor(blocks, dtype=torch.int32)
        slots += [blocks[p // bs] * bs + p % bs for p in range(ctx - q_len, ctx)]
    q_lens, ctx_lens = [q for _, q in specs], [c for c, _ in specs]
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0] + q_lens).cumsum(0).to(torch.int32).to(device),
        context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device), slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q_lens), max_context_len=max(ctx_lens), query_lens_cpu=q_lens, context_lens_cpu=ctx_lens,
    )
    shape = (num_blocks, bs, s.num_kv_heads, s.head_dim)
    q = _randn(gen, sum(q_lens), s.num_heads, s.head_dim, dtype=dtype, device=device)
    return q, _randn(gen, *shape, dtype=dtype, device=device), _randn(gen, *shape, dtype=dtype, device=device), meta


def _probe_attention(fn, ref, s: KernelShapes, dtype, device):
    gen = torch.Generator().manual_seed(4)
    q, k_cache, v_cache, meta = _attention_batch(s, dtype, device, gen)
    scale = s.head_dim**-0.5
    for window in (None, *s.windows):
        # a fresh metadata per call: backends cache their plans on it
        got = fn(q, k_cache, v_cache, replace(meta), scale, window=window)
        yield got, ref(q, k_cache, v_cache, replace(meta), scale, window=window)


def _probe_moe(fn, ref, s: KernelShapes, dtype, device):
    experts, top_k, inter = s.moe
    hidden, inter = min(s.hidden_size, _MOE_CAP), min(inter, _MOE_CAP)
    gen = torch.Generator().manual_seed(5)
    x = _randn(gen, 7, hidden, dtype=dtype, device=device)
    w13 = _randn(gen, experts, 2 * inter, hidden, dtype=dtype, device=device, scale=hidden**-0.5)
    w2 = _randn(gen, experts, hidden, inter, dtype=dtype, device=device, scale=inter**-0.5)
    logits = torch.randn(7, experts, generator=gen)
    logits[:, : top_k + 1] += 4.0  # most experts get no token
    weights, ids = logits.softmax(-1).topk(top_k)
    weights, ids = weights.to(dtype).to(device), ids.to(device)
    for activation in ("silu", "gelu_tanh"):
        yield fn(x, w13, w2, weights, ids, activation), ref(x, w13, w2, weights, ids, activation)


_PROBES = {
    "rms_norm": _probe_rms_norm,
    "rotary_embedding": _probe_rotary,
    "silu_and_mul": _probe_activation,
    "gelu_tanh_and_mul": _probe_activation,
    "write_kv": _probe_write_kv,
    "paged_attention": _probe_attention,
    "fused_moe": _probe_moe,
}
