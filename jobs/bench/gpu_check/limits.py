"""The card's limits for scripts/gpu_check.py: device-to-device copy bandwidth, bf16 matmul peak, and paged
attention against SDPA on the same K/V.

Reuses jobs/bench/engine.py (matmul_peak_flops) and jobs/bench/kernels.py (paged_batch, sdpa_fn, bench).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import Recorder, Section, free_memory, log, sync, time_fn


def hbm_bandwidth(sec: Section, p: dict, device: str) -> None:
    import torch

    x = torch.empty(p["hbm_bytes"], dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    best, iters = 0.0, 10
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            y.copy_(x)
        sync(device)
        best = max(best, 2 * iters * x.numel() / (time.perf_counter() - t))
    sec.figure("copy_bytes", x.numel())
    sec.figure("gb_s", best / 1e9)
    sec.detail("method", "device-to-device copy_ of one buffer, bytes read + written, best of 3 x 10 copies")


def matmul_peak(sec: Section, p: dict, device: str) -> None:
    import torch
    from pagebatch.jobs.bench.engine import matmul_peak_flops

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    n = p["matmul_n"]
    flops = matmul_peak_flops(device, dtype, n=n, seconds=p["matmul_s"])
    sec.figure("n", n)
    sec.figure("tflops", flops / 1e12)
    sec.detail("method", f"{n}x{n}x{n} {str(dtype).removeprefix('torch.')} matmuls (bench_engine.matmul_peak_flops), best over {p['matmul_s']} s")


def kernel_ops(device: str):
    """(ops module, backend name): the Triton kernels on CUDA, the torch references elsewhere."""
    from pagebatch.kernels import dispatch as kernels

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    choice = "triton" if device_type == "cuda" else "torch"
    select = getattr(kernels, "select_backend", None)
    if select is not None:
        backend = select(choice, device_type)
        return backend.ops, backend.name
    ops = kernels.backend_for(device_type)
    return ops, "triton" if ops.__name__.endswith("triton_ops") else "torch"


def attention(sec: Section, p: dict, device: str) -> None:
    """Paged attention (the engine's kernel) vs F.scaled_dot_product_attention on the same K/V laid out contiguously."""
    import torch
    from pagebatch.jobs.bench.kernels import paged_batch, sdpa_fn

    a = p["attn"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    ops, backend = kernel_ops(device)
    sec.detail("setup", dict(backend=backend, dtype=str(dtype), heads=a["heads"], kv_heads=a["kv_heads"], head_dim=a["head_dim"],
                             block_size=a["block_size"], sdpa="faster of native GQA and K/V expanded to all heads"))
    scale = a["head_dim"] ** -0.5
    ratios = []
    torch.manual_seed(0)
    for kind, batch, ctx, q_len in a["cases"]:
        if sec.remaining() < 3:
            sec.error(f"{kind} B={batch} ctx={ctx}: not run, section budget spent")
            continue
        q, kc, vc, meta, keys, values = paged_batch([(ctx, q_len)] * batch, a["heads"], a["kv_heads"], a["head_dim"], a["block_size"], dtype, device)
        run = lambda q=q, kc=kc, vc=vc, meta=meta: ops.paged_attention(q, kc, vc, meta, scale)  # noqa: E731
        expected = sdpa_fn(q, keys, values, q_len, gqa=False)()
        err = (run().view(batch, q_len, a["heads"], a["head_dim"]).transpose(1, 2).float() - expected.float()).abs().max().item()
        sdpa_s = min(time_fn(sdpa_fn(q, keys, values, q_len, gqa), device) for gqa in (True, False))
        paged_s = time_fn(run, device)
        key = f"{kind}_b{batch}_ctx{ctx}"
        sec.figure(f"{key}_paged_us", paged_s * 1e6)
        sec.figure(f"{key}_sdpa_us", sdpa_s * 1e6)
        sec.figure(f"{key}_ratio", paged_s / sdpa_s)
        sec.figure(f"{key}_max_abs_err", err)
        ratios.append(paged_s / sdpa_s)
        log(f"  attention {key}: paged {paged_s * 1e6:.1f} us, sdpa {sdpa_s * 1e6:.1f} us, ratio {paged_s / sdpa_s:.2f}, err {err:.1e}")
        tol = 5e-2 if dtype != torch.float32 else 1e-3
        if not err <= tol:
            sec.error(f"{key}: paged attention differs from SDPA by {err:.2e} (> {tol})")
        del run, q, kc, vc, meta, keys, values, expected
        free_memory()
    if ratios:
        sec.figure("worst_ratio", max(ratios))
        sec.figure("gmean_ratio", math.exp(sum(map(math.log, ratios)) / len(ratios)))


def run_limits(recorder: Recorder, p: dict, device: str, workdir: Path, deadline: float) -> None:
    def left(share: float) -> float:
        return max(0.0, (deadline - time.time()) * share)

    recorder.run("hbm_bandwidth", left(0.2), lambda s: hbm_bandwidth(s, p, device))
    recorder.run("matmul_peak", left(0.25), lambda s: matmul_peak(s, p, device))
    recorder.run("attention", left(0.95), lambda s: attention(s, p, device))
