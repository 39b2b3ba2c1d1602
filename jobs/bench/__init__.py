"""Benchmarks and machine probes as part of the product: `pagebatch bench NAME [options]`.

Each benchmark is a module here with ``main(argv) -> int | None``; ``scripts/`` keeps thin entry points so the
documented ``python scripts/bench_*.py`` commands keep working.
"""
from __future__ import annotations

import importlib

# `pagebatch bench NAME` -> the module that runs it, and a line for --help.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "engine": ("engine", "engine throughput against transformers (and llama.cpp) on one workload, one run"),
    "service": ("service", "the whole stack (API, Redis, S3, worker) against `pagebatch run` on one batch file"),
    "structured": ("structured", "structured-output validity and cost on real batch lines"),
    "kernels": ("kernels", "Triton hot-path kernels against torch on one CUDA GPU"),
    "cpu-attention": ("cpu_attention", "paged decode attention on the CPU against its memory-read floor"),
    "probe-cpu": ("probe_cpu", "this CPU's limits: memory bandwidth and matmul rates per model shape"),
    "gpu-check": ("gpu_check.main", "the one-shot GPU check (correctness, limits, throughput) on a lent device"),
}


def run_benchmark(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"{__name__}.{BENCHMARKS[name][0]}")
    return int(module.main(argv) or 0)
