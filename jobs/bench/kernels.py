"""Time the Triton hot-path kernels against torch on one CUDA GPU, all ratios from one run.

    python jobs/bench/kernels.py [--dtype fp16|bf16] [--heads 32 --kv-heads 8 --head-dim 128]

Paged attention is compared with F.scaled_dot_product_attention on the same K/V laid out
contiguously (the faster of SDPA's native GQA and K/V pre-expanded to all heads); the other ops
with the pure-torch references. ratio = torch time / Triton time (> 1: Triton is faster).
Without a GPU it says so and exits 0; ``--smoke`` then runs a tiny interpreter correctness check.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pagebatch.kernels import reference
from pagebatch.kernels.metadata import AttentionMetadata

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def paged_batch(
    specs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, list[torch.Tensor], list[torch.Tensor]]:
    """(q, k_cache, v_cache, meta, dense keys, dense values) for sequences of (context_len, query_len)."""
    counts = [-(-ctx // block_size) for ctx, _ in specs]
    num_blocks = sum(counts) + 1
    order = (torch.randperm(num_blocks - 1) + 1).tolist()
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    tables = torch.zeros(len(specs), max(counts), dtype=torch.int32)
    keys, values, slots, used = [], [], [], 0
    for i, ((ctx, q_len), n) in enumerate(zip(specs, counts)):
        blocks = torch.tensor(order[used : used + n])
        used += n
        tables[i, :n] = blocks.to(torch.int32)
        keys.append(k_cache[blocks.to(device)].flatten(0, 1)[:ctx])
        values.append(v_cache[blocks.to(device)].flatten(0, 1)[:ctx])
        pos = torch.arange(ctx - q_len, ctx)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    q_lens, ctx_lens = [q for _, q in specs], [c for c, _ in specs]
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0] + q_lens).cumsum(0).to(torch.int32).to(device),
        context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device), slot_mapping=torch.cat(slots).to(device),
        max_query_len=max(q_lens), max_context_len=max(ctx_lens), query_lens_cpu=q_lens, context_lens_cpu=ctx_lens,
    )
    q = torch.randn(sum(q_lens), heads, head_dim, dtype=dtype, device=device)
    return q, k_cache, v_cache, meta, keys, values


def sdpa_fn(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], q_len: int, gqa: bool) -> Callable[[], torch.Tensor]:
    """SDPA over equal-length sequences, K/V contiguous as [B, H, L, D]."""
    heads = q.shape[1]
    k = torch.stack(keys).transpose(1, 2).contiguous()
    v = torch.stack(values).transpose(1, 2).contiguous()
    if not gqa:
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    qb = q.view(len(keys), q_len, heads, -1).transpose(1, 2).contiguous()
    causal = q_len > 1
    return lambda: F.scaled_dot_product_attention(qb, k, v, is_causal=causal, enable_gqa=gqa)


def bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def report(name: str, triton_ms: float, torch_ms: float, err: float | None = None) -> None:
    extra = "" if err is None else f"  max|diff| {err:.2e}"
    print(f"{name:<46} triton {triton_ms * 1e3:9.1f} us  torch {torch_ms * 1e3:9.1f} us  ratio {torch_ms / triton_ms:5.2f}x{extra}")


def bench_attention(ops: object, args: argparse.Namespace, dtype: torch.dtype) -> None:
    from pagebatch.kernels.triton_attention import paged_attention_fwd

    h, hkv, d = args.heads, args.kv_heads, args.head_dim
    scale = d**-0.5
    cases = [("prefill", b, ctx, ctx) for b, ctx in ((1, 4096), (4, 1024), (16, 512))]
    cases += [("decode", b, ctx, 1) for b, ctx in ((1, 16384), (4, 8192), (32, 2048), (128, 1024), (256, 512))]
    for kind, batch, ctx, q_len in cases:
        q, kc, vc, meta, keys, values = paged_batch([(ctx, q_len)] * batch, h, hkv, d, args.block_size, dtype, "cuda")
        run = lambda: ops.paged_attention(q, kc, vc, meta, scale)  # noqa: E731
        expected = sdpa_fn(q, keys, values, q_len, gqa=False)()
        err = (run().view(batch, q_len, h, d).transpose(1, 2).float() - expected.float()).abs().max().item()
        torch_ms = min(bench(sdpa_fn(q, keys, values, q_len, gqa)) for gqa in (True, False))
        report(f"attention {kind} B={batch} ctx={ctx}", bench(run), torch_ms, err)
        if kind == "decode":
            single = bench(lambda: paged_attention_fwd(q, kc, vc, meta, scale, num_splits=1))
            split = bench(lambda: paged_attention_fwd(q, kc, vc, meta, scale, num_splits=8))
            print(f"{'':<46} split-KV(8) {split * 1e3:.1f} us vs single-pass {single * 1e3:.1f} us")
    specs = [(2048, 512)] + [(1024, 1)] * 64
    q, kc, vc, meta, _, _ = paged_batch(specs, h, hkv, d, args.block_size, dtype, "cuda")
    run = lambda: ops.paged_attention(q, kc, vc, meta, scale)  # noqa: E731
    ref = lambda: reference.paged_attention(q, kc, vc, meta, scale)  # noqa: E731
    err = (run().float() - ref().float()).abs().max().item()
    report("attention mixed 512-chunk+64 decodes (vs ref)", bench(run), bench(ref), err)


def bench_elementwise(ops: object, args: argparse.Namespace, dtype: torch.dtype) -> None:
    tokens, hidden, inter = args.tokens, args.heads * args.head_dim, args.intermediate
    x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
    res = torch.randn_like(x)
    w = torch.rand(hidden, dtype=dtype, device="cuda")
    for name, fn in (("rms_norm", lambda m: m.rms_norm(x, w, 1e-6)), ("rms_norm+residual", lambda m: m.rms_norm(x, w, 1e-6, res))):
        got, want = fn(ops), fn(reference)
        err = ((got[0] - want[0]) if isinstance(got, tuple) else (got - want)).abs().max().item()
        report(f"{name} [{tokens}, {hidden}]", bench(lambda: fn(ops)), bench(lambda: fn(reference)), err)
    d = args.head_dim
    half = torch.arange(0, d, 2, device="cuda").float() / d
    freqs = torch.arange(8192, device="cuda").float()[:, None] / (10000**half)[None, :]
    cache = torch.cat((freqs.cos(), freqs.sin()), -1)
    pos = torch.randint(0, 8192, (tokens,), device="cuda")
    q = torch.randn(tokens, args.heads, d, dtype=dtype, device="cuda")
    k = torch.randn(tokens, args.kv_heads, d, dtype=dtype, device="cuda")
    err = (ops.rotary_embedding(pos, q, k, cache)[0] - reference.rotary_embedding(pos, q, k, cache)[0]).abs().max().item()
    report(f"rotary [{tokens}, {args.heads}+{args.kv_heads}, {d}]", bench(lambda: ops.rotary_embedding(pos, q, k, cache)),
           bench(lambda: reference.rotary_embedding(pos, q, k, cache)), err)
    g = torch.randn(tokens, 2 * inter, dtype=dtype, device="cuda")
    err = (ops.silu_and_mul(g) - reference.silu_and_mul(g)).abs().max().item()
    report(f"silu_and_mul [{tokens}, {2 * inter}]", bench(lambda: ops.silu_and_mul(g)), bench(lambda: reference.silu_and_mul(g)), err)
    kc = torch.zeros(tokens // args.block_size + 1, args.block_size, args.kv_heads, d, dtype=dtype, device="cuda")
    vc = torch.zeros_like(kc)
    slots = torch.randperm(kc.shape[0] * args.block_size, device="cuda")[:tokens]
    report(f"write_kv [{tokens}, {args.kv_heads}, {d}]", bench(lambda: ops.write_kv(k, k, kc, vc, slots)),
           bench(lambda: reference.write_kv(k, k, kc, vc, slots)))


def smoke() -> None:
    """Tiny correctness check of every op through Triton's CPU interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of the kernel modules
    from pagebatch.kernels import triton_ops

    q, kc, vc, meta, _, _ = paged_batch([(37, 37), (20, 1), (30, 6)], 4, 2, 32, 8, torch.float32, "cpu")
    errors = {"paged_attention": triton_ops.paged_attention(q, kc, vc, meta, 0.2) - reference.paged_attention(q, kc, vc, meta, 0.2)}
    x, w = torch.randn(3, 40), torch.rand(40)
    errors["rms_norm"] = triton_ops.rms_norm(x, w, 1e-6) - reference.rms_norm(x, w, 1e-6)
    errors["silu_and_mul"] = triton_ops.silu_and_mul(x) - reference.silu_and_mul(x)
    cache, pos = torch.randn(16, 32), torch.randint(0, 16, (q.shape[0],))
    k = torch.randn(q.shape[0], 2, 32)
    errors["rotary_embedding"] = triton_ops.rotary_embedding(pos, q, k, cache)[0] - reference.rotary_embedding(pos, q, k, cache)[0]
    k2, v2 = kc.clone(), vc.clone()
    triton_ops.write_kv(k, k, kc, vc, meta.slot_mapping)
    reference.write_kv(k, k, k2, v2, meta.slot_mapping)
    errors["write_kv"] = kc - k2
    for name, diff in errors.items():
        err = diff.abs().max().item()
        print(f"interpreter smoke {name:<18} max|diff| {err:.2e}")
        if err > 1e-4:
            raise SystemExit(f"{name} disagrees with the reference")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--smoke", action="store_true", help="without a GPU: run the interpreter correctness smoke")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU available: nothing to benchmark.")
        if args.smoke:
            smoke()
        return 0
    from pagebatch.kernels import triton_ops

    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    print(f"{torch.cuda.get_device_name()}  dtype={args.dtype}  H={args.heads} Hkv={args.kv_heads} D={args.head_dim}")
    bench_attention(triton_ops, args, dtype)
    bench_elementwise(triton_ops, args, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
