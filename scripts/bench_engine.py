"""Engine throughput side by side with transformers, one process, one workload.

    python scripts/bench_engine.py                 # CPU, 2 threads, the issue's workload
    python scripts/bench_engine.py --device cuda   # on a GPU (bf16 by default there)

Systems: pagebatch (LLM.generate), transformers `generate` in padded static batches of 16, and
transformers' continuous batching manager (`generate_batch`'s engine, per-request max_new_tokens).
Throughput counts only the output tokens each request asked for. Ratios are from this one run.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import LLM, SamplingParams  # noqa: E402
from engine.make_model import make_checkpoint, sizes_for  # noqa: E402


def workload(num_prompts: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(32, 384))] for _ in range(num_prompts)]
    outputs = [rng.randint(16, 160) for _ in range(num_prompts)]
    return prompts, outputs


def matmul_peak_flops(device: str, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        _sync(device)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t))
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_pagebatch(path: str, prompts, outputs, device: str, dtype: str, kernels: str = "auto") -> tuple[float, object]:
    llm = LLM(path, dtype=dtype, device=device, max_num_seqs=256, max_num_batched_tokens=2048, kernels=kernels)
    llm.generate(prompts[:4], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    llm.engine.blocks.reset_prefix_cache()
    base_steps = llm.engine.stats().num_steps
    base_util = llm.engine.stats().kv_slot_utilization * base_steps
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in outputs]
    _sync(device)
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    _sync(device)
    elapsed = time.perf_counter() - t
    assert [len(o.token_ids) for o in outs] == outputs
    stats = llm.engine.stats()
    steps = stats.num_steps - base_steps
    utilization = (stats.kv_slot_utilization * stats.num_steps - base_util) / steps
    return elapsed, utilization


def _hf_model(path: str, device: str, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()


def run_static(path: str, prompts, outputs, device: str, dtype: str, batch: int = 16) -> float:
    model = _hf_model(path, device, dtype)
    pad = model.config.pad_token_id

    def go(ps, outs):
        width = max(len(p) for p in ps)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        n = max(outs)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)

    with torch.inference_mode():
        go(prompts[:2], [4, 4])
        _sync(device)
        t = time.perf_counter()
        for i in range(0, len(prompts), batch):
            go(prompts[i : i + batch], outputs[i : i + batch])
        _sync(device)
    return time.perf_counter() - t


def run_continuous(path: str, prompts, outputs, device: str, dtype: str) -> float:
    from transformers import GenerationConfig

    model = _hf_model(path, device, dtype)
    config = GenerationConfig(max_new_tokens=max(outputs), do_sample=False, eos_token_id=-1, pad_token_id=model.config.pad_token_id)
    with torch.inference_mode(), model.continuous_batching_context_manager(generation_config=config, block=True, timeout=30) as manager:
        _sync(device)
        t = time.perf_counter()
        for i, (p, n) in enumerate(zip(prompts, outputs)):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=n, eos_token_id=-1)
        done = 0
        while done < len(prompts):
            result = manager.get_result(timeout=600)
            if result is not None and result.is_finished():
                done += 1
        _sync(device)
        return time.perf_counter() - t


def step_breakdown(path: str, prompts, outputs, device: str, dtype: str) -> None:
    """Where pagebatch's time goes: prefill vs decode steps, and the attention share of a decode step."""
    import kernels.reference as reference

    llm = LLM(path, dtype=dtype, device=device)
    runner = llm.engine.runner
    execute = runner.execute
    spent = {"prefill": [0.0, 0], "decode": [0.0, 0]}

    def timed(batch):
        _sync(device)
        t = time.perf_counter()
        result = execute(batch)
        _sync(device)
        kind = "decode" if max(batch.num_new_tokens) == 1 else "prefill"
        spent[kind][0] += time.perf_counter() - t
        spent[kind][1] += 1
        return result

    runner.execute = timed
    llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in outputs])
    runner.execute = execute
    for kind, (seconds, steps) in spent.items():
        print(f"{kind:8s} steps: {steps:4d}, {seconds:6.2f} s, {1e3 * seconds / max(steps, 1):7.1f} ms/step")

    engine = llm.engine  # decode-only steps over the same prompts, with and without attention
    for p in prompts:
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.requests.values()):
        engine.step()

    def decode_ms(steps: int = 10) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
        _sync(device)
        return 1e3 * (time.perf_counter() - t) / steps

    with_attention = decode_ms()
    attention = reference.paged_attention
    reference.paged_attention = lambda q, k_cache, v_cache, meta, scale: q.clone()
    without = decode_ms()
    reference.paged_attention = attention
    print(f"decode step of {len(prompts)} sequences (torch kernels): {with_attention:.1f} ms, "
          f"{without:.1f} ms without attention -> attention {100 * (1 - without / with_attention):.0f}% of the step")


def decode_bandwidth(device: str, dtype: str, steps: int, preset: str) -> None:
    """Batch-1 decode of a ~0.5B random model: bytes a step must read (weights + live KV) over its time,
    against the device's measured copy bandwidth."""
    tmp = tempfile.TemporaryDirectory()
    sizes = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864, vocab_size=151936)
    if preset != "0.5b":
        sizes = sizes_for(preset)
    path = make_checkpoint(Path(tmp.name) / "m", "qwen2", tie_word_embeddings=True, dtype=dtype, **sizes)
    llm = LLM(str(path), dtype=dtype, device=device, max_num_seqs=8)
    prompt = list(range(10, 138))
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up
    _sync(device)
    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True))
    _sync(device)
    per_step = (time.perf_counter() - t) / steps
    spec, elem = llm.engine.spec, torch.empty((), dtype=getattr(torch, dtype)).element_size()
    weights = sum(t.numel() for layer in llm.engine.model.layers for t in vars(layer).values() if t is not None)
    model = llm.engine.model
    head = 0 if model.lm_head is model.embed else model.lm_head.numel()
    weights = (weights + model.embed.numel() + model.norm.numel() + head) * elem
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * elem * (len(prompt) + steps / 2)
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    _sync(device)
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(device)
    copy_bw = 2 * 10 * x.numel() / (time.perf_counter() - t)
    achieved = (weights + kv) / per_step
    print(f"decode batch 1: {per_step * 1e3:.2f} ms/step, {(weights + kv) / 1e9:.2f} GB read per step, "
          f"{achieved / 1e9:.0f} GB/s = {100 * achieved / copy_bw:.0f}% of measured copy bandwidth ({copy_bw / 1e9:.0f} GB/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=48)
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a random 28M Llama made here)")
    ap.add_argument("--skip", default="", help="comma list of systems to skip: static,continuous")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-bandwidth", action="store_true", help="batch-1 decode bandwidth of a ~0.5B model instead")
    ap.add_argument("--bandwidth-preset", default="0.5b", help="0.5b, or a make_model preset for a quick CPU run")
    ap.add_argument("--breakdown", action="store_true", help="also print where pagebatch's time goes")
    ap.add_argument("--kernels", default="auto",
                    help="engine kernel choices to compare, e.g. torch,cpu (alternated, best of --rounds; the first "
                         "is the one compared with transformers)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of pagebatch runs (best of)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.decode_bandwidth:
        decode_bandwidth(args.device, dtype, steps=128, preset=args.bandwidth_preset)
        return
    tmp = tempfile.TemporaryDirectory()
    path = args.model or str(make_checkpoint(Path(tmp.name) / "bench-llama", "llama", **sizes_for("bench")))
    vocab = 4096
    prompts, outputs = workload(args.num_prompts, vocab, args.seed)
    useful = sum(outputs)
    n_params = sum(p.numel() for p in _hf_model(path, "cpu", "float32").parameters())
    print(f"model: {n_params / 1e6:.1f}M params, {args.num_prompts} prompts ({sum(map(len, prompts))} prompt tokens), "
          f"{useful} output tokens, device={args.device}, dtype={dtype}, threads={args.threads}")

    results = {}
    kernel_choices = args.kernels.split(",")
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for choice in kernel_choices:
            elapsed, utilization = run_pagebatch(path, prompts, outputs, args.device, dtype, choice)
            best[choice] = min(best.get(choice, float("inf")), elapsed)
    results["pagebatch"] = best[kernel_choices[0]]
    for choice in kernel_choices[1:]:
        print(f"pagebatch kernels={choice:8s} {useful / best[choice]:10.1f} output tok/s = "
              f"{best[kernel_choices[0]] / best[choice]:.2f}x kernels={kernel_choices[0]} (best of {args.rounds})")
    skip = set(filter(None, args.skip.split(",")))
    if "static" not in skip:
        results["transformers generate (static, batch 16)"] = run_static(path, prompts, outputs, args.device, dtype)
    if "continuous" not in skip:
        results["transformers generate_batch (continuous)"] = run_continuous(path, prompts, outputs, args.device, dtype)

    for name, seconds in results.items():
        print(f"{name:45s} {useful / seconds:10.1f} output tok/s")
    for name, seconds in results.items():
        if name != "pagebatch":
            print(f"pagebatch / {name:33s} {seconds / results['pagebatch']:6.2f}x")
    peak = matmul_peak_flops(args.device, getattr(torch, dtype))
    tokens = sum(map(len, prompts)) + useful
    achieved = 2 * n_params * tokens / results["pagebatch"]
    print(f"matmul peak measured: {peak / 1e9:.1f} GFLOP/s; pagebatch achieved {achieved / 1e9:.1f} GFLOP/s "
          f"(2 x params x tokens) = {100 * achieved / peak:.1f}% of peak")
    print(f"KV-cache utilization (live tokens / allocated slots, mean over steps): {100 * utilization:.1f}%")
    if args.breakdown:
        step_breakdown(path, prompts, outputs, args.device, dtype)


if __name__ == "__main__":
    main()
