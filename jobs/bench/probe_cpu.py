"""This CPU's limits as the engine meets them: memory bandwidth, matmul rates at decode and prefill row counts, and
where a prefill's time goes. The figures docs/performance.md quotes beside bench_engine's.

    python scripts/probe_cpu.py [--threads 2] [--rows 1,8,48,512,2048] [--rounds 5] [--profile-prefill 16]

bandwidth: torch sum (read) and copy_ (read + write) of a 1 GiB float32 tensor, best of --rounds.
matmul:    GFLOP/s of SmolLM2-135M's weight shapes at each row count M, float32, weights in cache (each product
           repeated): the models' F.linear(x, W) and the transposed product mm(W, x.T).T.contiguous(), alternated.
--profile-prefill N: torch.profiler's op table of pagebatch prefilling N of the summarize workload's prompts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}


def best_seconds(fn, rounds: int, reps: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def bandwidth(rounds: int) -> None:
    x = torch.randn(2**28)
    y = torch.empty_like(x)
    read = x.numel() * 4 / best_seconds(x.sum, rounds)
    copy = 2 * x.numel() * 4 / best_seconds(lambda: y.copy_(x), rounds)
    print(f"memory: read {read / 1e9:.1f} GB/s, copy {copy / 1e9:.1f} GB/s (1 GiB float32, best of {rounds})")


def matmuls(rows: list[int], rounds: int) -> None:
    print("matmul GFLOP/s, float32, weights in cache: F.linear | transposed product")
    for m in rows:
        cells = []
        for name, (n, k) in SHAPES.items():
            w, x = torch.randn(n, k), torch.randn(m, k)
            reps = max(2, int(2e8 / (2 * m * n * k)))
            linear = transposed = float("inf")
            for _ in range(rounds):
                linear = min(linear, best_seconds(lambda: F.linear(x, w), 1, reps))
                transposed = min(transposed, best_seconds(lambda: torch.mm(w, x.t()).t().contiguous(), 1, reps))
            flops = 2 * m * n * k
            cells.append(f"{name} {flops / linear / 1e9:5.1f} | {flops / transposed / 1e9:5.1f}")
        print(f"  M={m:<5d} " + "   ".join(cells))


def profile_prefill(num_prompts: int) -> None:
    from pagebatch.jobs.bench.workloads import build_llm, smollm2_dir, summarize_workload
    from pagebatch.engine.sampling_params import SamplingParams

    w = summarize_workload(smollm2_dir(), max(num_prompts, 4), 0)
    llm = build_llm(w, "cpu", "float32")
    llm.generate(w.prompts[:2], SamplingParams(temperature=0, max_tokens=2))
    llm.engine.blocks.reset_prefix_cache()
    prompts = w.prompts[:num_prompts]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=1))
    print(f"prefill of {num_prompts} prompts ({sum(map(len, prompts))} tokens), float32:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,8,48,512,2048")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile-prefill", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bandwidth(args.rounds)
    matmuls([int(r) for r in args.rows.split(",")], args.rounds)
    if args.profile_prefill:
        profile_prefill(args.profile_prefill)


if __name__ == "__main__":
    main()
