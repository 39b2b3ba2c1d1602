"""CPU decode attention: kernels.reference vs kernels.cpu_attention (and alternatives), all ratios from one run.

    python jobs/bench/cpu_attention.py [--seqs 48 --ctx 400 --spread 50] [--dtypes fp32,bf16]
        [--impls ref,cpp,cpp-4k,compile,gather-bmm,read-floor] [--rounds 5] [--threads N [--clock cpu]] [--no-step]

Workload: one decode step (one query token per sequence) of a SmolLM2-135M-shaped model (30 layers,
9 query heads, 3 kv heads, head_dim 64, hidden 576, MLP 1536, vocab 49152, block_size 16), every
layer with its own paged KV cache (blocks shuffled), contexts uniform in ctx +- spread.

  attention: the 30 layers' paged_attention calls of one step (metadata built fresh each step, so the
             per-batch plan is included), ms per step and per layer; ratio = ref time / impl time.
  step:      the whole decode step written out as engine/models/decoder.py runs it (norms, GEMMs at
             M = seqs, rotary, KV write, attention, lm_head) with each attention impl;
             share = attention time / step time of that impl.
Every impl runs once per round, alternating; best of --rounds rounds. On a busy machine use
--threads 1 --clock cpu (thread CPU time) for steadier ratios.

impls: ref         kernels.reference.paged_attention (padded index_select gather + SDPA)
       cpp         kernels.cpu_attention.paged_attention (C++ kernel, blocks read in place)
       compile     torch.compile (inductor) of a gather-free formulation: scores and weighted values
                   as broadcast-multiply + sum over an indexed view, so inductor can fuse the indirect
                   loads into its loops (one compile per shape; padded to the longest context)
       gather-bmm  pure torch: one index_select gather of all sequences, fp32 matmuls, masked softmax
       cpp-4k      the same C++ kernel on a copy of the pool in ordinary memory (4 KiB pages), where "cpp" reads
                   the pool as the engine allocates it (engine.runner.zeroed_pool: transparent huge pages)
       read-floor  not attention: a sequential read of the cache bytes the batch owns (torch sum), the
                   memory-bandwidth lower bound; the blocks' scattered order costs more than this
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pagebatch.engine.runner import zeroed_pool
from pagebatch.kernels import cpu_attention, reference
from pagebatch.kernels.metadata import AttentionMetadata

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMOLLM2 = {"layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64, "hidden": 576, "intermediate": 1536, "vocab": 49152}


def make_workload(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    bs, d, hkv = args.block_size, args.head_dim, args.kv_heads
    ctx = torch.randint(args.ctx - args.spread, args.ctx + args.spread + 1, (args.seqs,), generator=g).tolist()
    ctx = [max(1, c) for c in ctx]
    counts = [-(-c // bs) for c in ctx]
    num_blocks = sum(counts) + 1 + args.spare_blocks
    order = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.zeros(args.seqs, max(counts), dtype=torch.int32)
    used = 0
    for i, n in enumerate(counts):
        tables[i, :n] = torch.tensor(order[used : used + n], dtype=torch.int32)
        used += n
    slots = torch.tensor([int(tables[i, (c - 1) // bs]) * bs + (c - 1) % bs for i, c in enumerate(ctx)])
    # allocated as the engine allocates its KV pool (engine.runner.zeroed_pool: huge pages where the OS has them)
    shape = (args.layers, 2, num_blocks, bs, hkv, d)
    pool = zeroed_pool(shape, dtype, torch.device("cpu"))
    pool.copy_(torch.randn(*shape, generator=g))
    q = torch.randn(args.layers, args.seqs, args.heads, d, generator=g).to(dtype)
    w = {"ctx": ctx, "tables": tables, "slots": slots, "pool": pool, "q": q}
    if "cpp-4k" in args.impls.split(","):
        w["pool-4k"] = torch.empty(shape, dtype=dtype).copy_(pool)  # glibc's mmap: 4 KiB pages (THP on madvise)
    return w


def make_meta(w: dict) -> AttentionMetadata:
    n = len(w["ctx"])
    return AttentionMetadata(
        cu_seqlens_q=torch.arange(n + 1, dtype=torch.int32), context_lens=torch.tensor(w["ctx"], dtype=torch.int32),
        block_tables=w["tables"], slot_mapping=w["slots"], max_query_len=1, max_context_len=max(w["ctx"]),
        query_lens_cpu=[1] * n, context_lens_cpu=list(w["ctx"]),
    )


# ---- alternatives to the C++ kernel -------------------------------------------------------------


def gather_bmm_attention(q, k_cache, v_cache, meta, scale):
    """Pure torch, decode-only: gather every sequence's blocks once (padded), fp32 bmm, masked softmax."""
    bs, hkv, d = k_cache.shape[1:]
    n, h = q.shape[0], q.shape[1]
    g = h // hkv
    nb = -(-meta.max_context_len // bs)
    tables = meta.block_tables[:, :nb].flatten()
    k = k_cache.index_select(0, tables).view(n, nb * bs, hkv, d).permute(0, 2, 3, 1)  # [n, Hkv, D, L]
    v = v_cache.index_select(0, tables).view(n, nb * bs, hkv, d).transpose(1, 2)  # [n, Hkv, L, D]
    qf = q.view(n, hkv, g, d).float() * scale
    s = torch.matmul(qf, k.float())  # [n, Hkv, G, L]
    mask = torch.arange(nb * bs)[None, :] >= meta.context_lens[:, None]
    s.masked_fill_(mask[:, None, None, :], float("-inf"))
    o = torch.matmul(s.softmax(-1), v.float())  # [n, Hkv, G, D]
    return o.view(n, h, d).to(q.dtype)


def _compiled_core(q, k_cache, v_cache, tables, ctx_lens, scale: float):
    n, h, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    g = h // hkv
    length = tables.shape[1] * bs
    pos = torch.arange(length)
    blk = tables[:, pos // bs].long()  # [n, L]
    off = (pos % bs)[None, :]
    qf = q.float().view(n, 1, hkv, g, d) * scale
    k = k_cache[blk, off].float()  # [n, L, Hkv, D]: an indexed view inductor can fuse into the reduction
    s = (qf * k.unsqueeze(3)).sum(-1)  # [n, L, Hkv, G]
    s = s.masked_fill(pos[None, :, None, None] >= ctx_lens[:, None, None, None], float("-inf"))
    p = s.softmax(1)
    v = v_cache[blk, off].float()
    o = (p.unsqueeze(-1) * v.unsqueeze(3)).sum(1)  # [n, Hkv, G, D]
    return o.reshape(n, h, d).to(q.dtype)


_compiled = None


def compiled_attention(q, k_cache, v_cache, meta, scale):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_compiled_core, dynamic=False)
    nb = -(-meta.max_context_len // k_cache.shape[1])
    return _compiled(q, k_cache, v_cache, meta.block_tables[:, :nb], meta.context_lens, scale)


def read_floor(q, k_cache, v_cache, meta, scale):
    """Not attention: a sequential read of as many cache bytes as the decode rows own (a lower bound)."""
    used = sum(-(-c // k_cache.shape[1]) for c in meta.context_lens_cpu)
    k_cache[1 : used + 1].sum()
    v_cache[1 : used + 1].sum()
    return q


IMPLS: dict[str, Callable] = {
    "ref": reference.paged_attention,
    "cpp": cpu_attention.paged_attention,
    "compile": compiled_attention,
    "gather-bmm": gather_bmm_attention,
    "cpp-4k": cpu_attention.paged_attention,
    "read-floor": read_floor,
}


def pool_of(name: str, w: dict) -> torch.Tensor:
    return w["pool-4k"] if name == "cpp-4k" else w["pool"]


# ---- timing ---------------------------------------------------------------------------------------


def attention_step(fn: Callable, w: dict, scale: float, pool: torch.Tensor | None = None) -> torch.Tensor:
    meta = make_meta(w)
    pool = w["pool"] if pool is None else pool
    out = None
    for layer in range(pool.shape[0]):
        out = fn(w["q"][layer], pool[layer, 0], pool[layer, 1], meta, scale)
    return out


def make_model(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)
    hd, h, hkv, d, inter = args.hidden, args.heads, args.kv_heads, args.head_dim, args.intermediate

    def weight(*shape):
        return (torch.randn(*shape, generator=g) * shape[-1] ** -0.5).to(dtype)

    layers = [
        {"qkv": weight((h + 2 * hkv) * d, hd), "o": weight(hd, h * d), "gate_up": weight(2 * inter, hd),
         "down": weight(hd, inter), "input_norm": torch.ones(hd, dtype=dtype), "post_norm": torch.ones(hd, dtype=dtype)}
        for _ in range(args.layers)
    ]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    freqs = torch.arange(4096, dtype=torch.float)[:, None] * inv_freq[None, :]
    return {"layers": layers, "embed": weight(args.vocab, hd), "norm": torch.ones(hd, dtype=dtype),
            "cos_sin": torch.cat((freqs.cos(), freqs.sin()), dim=-1)}


@torch.inference_mode()
def decode_step(fn: Callable | None, w: dict, m: dict, args: argparse.Namespace, scale: float) -> torch.Tensor:
    """One decode step as engine/models/decoder.py runs it (fn=None: attention skipped, output = q)."""
    meta = make_meta(w)
    n, h, hkv, d = len(w["ctx"]), args.heads, args.kv_heads, args.head_dim
    positions = torch.tensor(w["ctx"]) - 1
    ids = torch.arange(n) % args.vocab
    hidden = F.embedding(ids, m["embed"])
    residual = None
    eps = 1e-5
    for layer, lw in enumerate(m["layers"]):
        k_cache, v_cache = w["pool"][layer, 0], w["pool"][layer, 1]
        if residual is None:
            residual = hidden
            x = reference.rms_norm(hidden, lw["input_norm"], eps)
        else:
            x, residual = reference.rms_norm(hidden, lw["input_norm"], eps, residual)
        q, k, v = F.linear(x, lw["qkv"]).split([h * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.reshape(n, h, d), k.reshape(n, hkv, d), v.reshape(n, hkv, d)
        q, k = reference.rotary_embedding(positions, q, k, m["cos_sin"])
        reference.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        attn = q if fn is None else fn(q, k_cache, v_cache, meta, scale)
        hidden = F.linear(attn.reshape(n, h * d), lw["o"])
        x, residual = reference.rms_norm(hidden, lw["post_norm"], eps, residual)
        hidden = F.linear(reference.silu_and_mul(F.linear(x, lw["gate_up"])), lw["down"])
    x, _ = reference.rms_norm(hidden, m["norm"], eps, residual)
    return F.linear(x, m["embed"]).float()


CLOCK = time.perf_counter


def best_of(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = CLOCK()
            fn()
            best[name] = min(best[name], CLOCK() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=48)
    ap.add_argument("--ctx", type=int, default=400)
    ap.add_argument("--spread", type=int, default=50)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--spare-blocks", type=int, default=64)
    for key, value in SMOLLM2.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--impls", default="ref,cpp", help="comma-separated, of: " + ", ".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-step", action="store_true", help="attention only, no full decode step")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (needs --threads 1); steadier than wall time on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            ap.error("--clock cpu needs --threads 1 (other threads' time would not be counted)")
        global CLOCK
        CLOCK = time.thread_time
    impls = [i for i in args.impls.split(",") if i]
    if {"cpp", "cpp-4k"} & set(impls):
        t = time.perf_counter()
        ok = cpu_attention.available()
        print(f"cpp kernel: available={ok}, load/build {time.perf_counter() - t:.1f} s")
        if not ok:
            impls = [i for i in impls if i not in ("cpp", "cpp-4k")]
    scale = args.head_dim**-0.5
    print(f"{args.seqs} seqs, ctx {args.ctx}+-{args.spread}, {args.layers} layers, heads {args.heads}/{args.kv_heads}, "
          f"head_dim {args.head_dim}, block {args.block_size}, threads {torch.get_num_threads()}, {args.clock} clock, "
          f"best of {args.rounds}")
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        w = make_workload(args, dtype)
        kv_mb = sum(w["ctx"]) * args.kv_heads * args.head_dim * 2 * w["pool"].element_size() / 2**20
        print(f"\n== {dname}: KV read per layer {kv_mb:.1f} MiB, per step {kv_mb * args.layers:.0f} MiB")
        with torch.inference_mode():
            expected = attention_step(reference.paged_attention, w, scale).float()
            for name in impls:
                if name == "read-floor":
                    continue
                t = time.perf_counter()
                got = attention_step(IMPLS[name], w, scale, pool_of(name, w)).float()  # warm-up (compile for 'compile')
                err = (got - expected).abs().max().item()
                print(f"  {name:11s} first call {time.perf_counter() - t:6.2f} s, max|diff| vs ref {err:.2e}")
            att = best_of({name: (lambda f=IMPLS[name], w=w, p=pool_of(name, w): attention_step(f, w, scale, p))
                           for name in impls}, args.rounds)
        print(f"  {'attention':11s} {'ms/step':>9s} {'ms/layer':>9s} {'ref/impl':>9s}")
        for name in impls:
            print(f"  {name:11s} {1e3 * att[name]:9.2f} {1e3 * att[name] / args.layers:9.3f} {att['ref'] / att[name] if 'ref' in att else 0:9.2f}x")
        if args.no_step:
            continue
        m = make_model(args, dtype)
        fns = {"(no attention)": lambda w=w, m=m: decode_step(None, w, m, args, scale)}
        impls = [i for i in impls if i not in ("read-floor", "cpp-4k")]
        fns.update({name: (lambda f=IMPLS[name], w=w, m=m: decode_step(f, w, m, args, scale)) for name in impls})
        for fn in fns.values():
            fn()
        step = best_of(fns, args.rounds)
        rest = step["(no attention)"]
        print(f"  {'decode step':15s} {'ms':>8s} {'attn share':>11s} {'(step-rest)/step':>17s} {'ref/impl':>9s}")
        print(f"  {'(no attention)':15s} {1e3 * rest:8.1f}")
        for name in impls:
            s = step[name]
            print(f"  {name:15s} {1e3 * s:8.1f} {att[name] / s:10.1%} {(s - rest) / s:16.1%} "
                  f"{step['ref'] / s if 'ref' in step else 0:9.2f}x")


if __name__ == "__main__":
    main()
