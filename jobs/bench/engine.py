"""Engine throughput side by side with transformers, one process, one workload; ratios from this one run.

    python jobs/bench/engine.py                          # CPU, 2 threads: random 28M Llama, random tokens
    python jobs/bench/engine.py --workload summarize     # SmolLM2-135M-Instruct summarizing Python's docs
    python jobs/bench/engine.py --workload embeddings --rounds 2   # 5,000 inputs vs sentence-transformers
    python jobs/bench/engine.py --device cuda            # on a GPU (bf16 by default there)
    python jobs/bench/engine.py --kernels cpu,torch --rounds 3          # engine kernel choices, alternated
    python jobs/bench/engine.py --breakdown --skip compare               # where a step's time goes
    python jobs/bench/engine.py --dtype-sweep --skip compare --rounds 3  # bf16 vs fp32 decode steps, batch 1-128
    python jobs/bench/engine.py --structured --skip compare --workload summarize   # cost of a JSON schema
    python jobs/bench/engine.py --decode-bandwidth       # batch-1 decode of a ~0.5B model vs copy bandwidth
    python jobs/bench/engine.py --arch mixtral --skip continuous --rounds 3   # a random MoE (8 experts, top-2)
    python jobs/bench/engine.py --moe-vs-dense --skip compare --rounds 5     # MoE vs dense decode steps, batch 48
    python jobs/bench/engine.py --workload labeling --rounds 2 --llama-cpp DIR   # 2,000 rows, one shared instruction
    python jobs/bench/engine.py --workload summarize --num-prompts 48 --skip continuous --llama-cpp DIR
                                                            # beside llama.cpp's llama-server, same GGUF weights

Systems: pagebatch (LLM.generate), transformers `generate` in padded static batches of 16, and transformers'
continuous batching manager (`generate_batch`'s engine, per-request max_new_tokens), alternated round by round
in one dtype; each system's best of --rounds. Throughput counts the output tokens each system generated: for
the synthetic workload (EOS ignored) the tokens each request asked for; for summarize (greedy, EOS on) pagebatch's
token_ids, static `generate`'s tokens up to and including each row's first EOS, and generate_batch's tokens.
Work: 2 x params x (prompt + output tokens) + attention (4 x layers x heads x head_dim x context, per token),
as GFLOP/s and as a share of the best measured matmul peak of the dtype (a 1024 square and model-shaped ones).

--breakdown: ms per step and share of it, averaged over the workload's prefill (and mixed) steps and decode steps,
and over decode steps of --num-prompts sequences at ~--breakdown-context tokens: model forward (and, for the last,
the attention in it: the active kernel backend's paged_attention swapped for a no-op, alternately), sampling, and
host work (the runner's batch packing; scheduling, the scheduler's update and outputs). The engine is not edited:
its methods are wrapped with perf_counter while the breakdown runs.
--dtype-sweep: decode step time at each --sweep-batches size, ~--sweep-context tokens of context, float32 and
bfloat16 engines alternated, best of --rounds; bf16/fp32 per batch, and whether this CPU computes bf16 natively.
--moe-vs-dense: decode step time of the random mixture of experts (--arch, default mixtral: 8 experts of 704, top-2)
against the dense model of the same family with the same active parameters (one MLP of 1408: mistral / qwen3), at
--moe-batch sequences of ~--sweep-context tokens, engines alternated, best of --rounds.
--structured: the same prompts with a JSON schema (response_format json_schema) and without it (each request then
generating as many tokens as its schema answer, EOS ignored), alternated, best of --rounds; the share of schema
answers that parse and validate (jsonschema).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from pagebatch.jobs.bench.llamacpp import LlamaServer
from pagebatch.jobs.bench.workloads import (
    STRUCTURED_MAX_TOKENS, STRUCTURED_SCHEMA, Run, StepClock, Workload, active_params, best_of_rounds, build_llm,
    continuous_run, decode_budget, decode_steps, fill_engine, fixed_length_prompts, pagebatch_run, schema_valid, smollm2_dir,
    static_run, summarize_workload, sync, synthetic_requests, synthetic_workload, without_attention, workload_flops,
)
from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.make_model import make_checkpoint, sizes_for
from pagebatch.engine.models import ModelSpec, load_hf_config


def workload(num_prompts: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """The synthetic workload's prompts and output lengths (jobs/bench/gpu_check/bench.py imports it)."""
    return synthetic_requests(num_prompts, vocab, seed)


def matmul_peak_flops(device: str, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0,
                      m: int | None = None, k: int | None = None) -> float:
    """Best FLOP/s of [m, k] x [k, n] matmuls (m and k default to n: a square) over ``seconds``, in both weight
    layouts: ``a @ b`` with b [k, n] and the models' ``F.linear(a, w)`` with w [n, k] (on a CPU without native
    bf16, torch's bf16 matmul is ~10x slower in the first layout than in the second)."""
    m, k = m or n, k or n
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    w = b.t().contiguous()
    best = 0.0
    for product in (lambda: a @ b, lambda: F.linear(a, w)):
        for _ in range(3):
            product()
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            _sync(device)
            t = time.perf_counter()
            for _ in range(5):
                product()
            _sync(device)
            best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - t))
    return best


_sync = sync


def _hf_model(path: str, device: str, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()


def run_static(path: str, prompts, outputs, device: str, dtype: str, batch: int = 16) -> float:
    """Seconds of static ``generate`` over the synthetic workload (jobs/bench/gpu_check/bench.py imports it)."""
    w = Workload("synthetic", path, prompts, outputs, ignore_eos=True)
    return static_run(_hf_model(path, device, dtype), w, device, batch).seconds


def run_continuous(path: str, prompts, outputs, device: str, dtype: str) -> float:
    """Seconds of transformers' continuous batching over the synthetic workload (gpu_check_bench imports it)."""
    w = Workload("synthetic", path, prompts, outputs, ignore_eos=True)
    return continuous_run(_hf_model(path, device, dtype), w, device).seconds


# -- the comparison -------------------------------------------------------------------------------------------
def compare(
    w: Workload, device: str, dtype: str, kernel_choices: list[str], skip: set[str], rounds: int,
    llama: LlamaServer | None = None,
) -> dict[str, Run]:
    """Every system once per round, alternated; each system's best (fastest) run. Models load once, untimed."""
    systems: dict[str, Callable[[], Run]] = {}
    for choice in kernel_choices:
        systems[f"pagebatch kernels={choice}"] = partial(pagebatch_run, build_llm(w, device, dtype, choice), w, device)
    hf = None if {"static", "continuous"} <= skip else _hf_model(w.model, device, dtype)
    if "static" not in skip:
        systems["transformers generate (static, batch 16)"] = partial(static_run, hf, w, device)
    if "continuous" not in skip:
        systems["transformers generate_batch (continuous)"] = partial(continuous_run, hf, w, device)
    if llama is not None:
        systems[f"llama.cpp llama-server ({llama.gguf.name}, {llama.kv_type} KV)"] = llama.run
    return best_of_rounds(systems, rounds)


def report_compare(best: dict[str, Run], w: Workload, rounds: int) -> None:
    base_name = next(iter(best))
    base = best[base_name]
    for name, r in best.items():
        print(f"{name:45s} {r.output_tokens / r.seconds:10.1f} output tok/s ({r.output_tokens} tokens, "
              f"{r.seconds:.2f} s, best of {rounds})")
    for name, r in best.items():
        if name != base_name:
            ratio = (base.output_tokens / base.seconds) / (r.output_tokens / r.seconds)
            print(f"{base_name} / {name:40s} {ratio:6.2f}x output tok/s")
    for name, r in best.items():
        if name != base_name:
            same = sum(a == b for a, b in zip(base.token_ids, r.token_ids))
            print(f"token-identical outputs, {base_name} vs {name}: {same}/{len(w.prompts)}")
    print(f"KV-cache utilization (live tokens / allocated slots, mean over steps): {100 * base.utilization:.1f}%")


def num_params(llm: LLM) -> int:
    return llm.engine.model.num_parameters()


def report_work(w: Workload, run: Run, n_params: int, device: str, dtype: str) -> None:
    spec = ModelSpec.from_hf_config(load_hf_config(Path(w.model)))
    flops = workload_flops(n_params, spec.num_layers, spec.num_heads, spec.head_dim, list(map(len, w.prompts)),
                           list(map(len, run.token_ids)))
    h, i = spec.hidden_size, spec.intermediate_size
    shapes = {"1024x1024x1024": (1024, 1024, 1024), f"512x{h}x{i}": (512, h, i), f"512x{i}x{h}": (512, i, h),
              f"512x{h}x{h}": (512, h, h)}
    peaks = {name: matmul_peak_flops(device, getattr(torch, dtype), n=n, m=m, k=k, seconds=0.5)
             for name, (m, k, n) in shapes.items()}
    best = max(peaks, key=peaks.get)
    print(f"{dtype} matmul peak (M x K x N, best of 0.5 s each): "
          + ", ".join(f"{name} {v / 1e9:.1f}" for name, v in peaks.items()) + " GFLOP/s")
    achieved = flops / run.seconds
    print(f"pagebatch work: {flops / 1e9:.1f} GFLOP ({n_params / 1e6:.1f}M active params x 2 x tokens + attention), "
          f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peaks[best]:.1f}% of the best peak ({best})")


# -- where a step's time goes -----------------------------------------------------------------------------------
def breakdown(w: Workload, device: str, dtype: str, kernels: str, num_seqs: int, context: int, rounds: int) -> None:
    """Per step, averaged: the workload's prefill and decode steps, then decode steps of ``num_seqs`` sequences at
    ~``context`` tokens, alternately with and without attention (the active backend's paged_attention a no-op)."""
    llm = build_llm(w, device, dtype, kernels, enable_cuda_graphs=False)  # a graph would replay the real attention
    llm.generate(w.prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    llm.engine.blocks.reset_prefix_cache()
    clock = StepClock(llm.engine, device)
    llm.generate(w.prompts, w.sampling_params())
    clock.restore()
    columns = {"prefill/mixed steps": clock.mean("prefill"), "decode steps": clock.mean("decode")}
    del llm, clock
    gc.collect()

    steps, blocks = 8, max(rounds, 3)
    prompts = fixed_length_prompts(w.prompts, num_seqs, context)
    budget = decode_budget(prompts, 2 * steps * blocks)
    engine = build_llm(_decoding(w, prompts, budget), device, dtype, kernels, enable_cuda_graphs=False).engine
    fill_engine(engine, prompts, budget)
    clock, ops = StepClock(engine, device), engine.model.ops
    for _ in range(blocks):
        clock.section = "with"
        decode_steps(engine, device, steps)
        clock.section, engine.model.ops = "without", without_attention(ops)
        decode_steps(engine, device, steps)
        engine.model.ops = ops
    clock.restore()
    full = clock.mean("with")
    full["attention"] = full["forward"] - clock.mean("without")["forward"]
    columns[f"decode {num_seqs} seqs, ~{context} ctx"] = full
    print(f"\nbreakdown, kernels={engine.model.kernels.name}, dtype={dtype}: ms/step (% of step), mean over steps")
    print(f"{'':32s}" + "".join(f"{name:>26s}" for name in columns))
    for part, label in (("step", "whole step"), ("forward", "model forward"), ("attention", "  of which attention"),
                        ("sample", "sampling"), ("packing", "host: runner batch packing"),
                        ("engine", "host: schedule/update/outputs")):
        cells = [f"{c[part]:9.2f} ms ({100 * c[part] / c['step']:5.1f}%)" if part in c else "-"
                 for c in columns.values()]
        print(f"{label:32s}" + "".join(f"{cell:>26s}" for cell in cells))
    print(f"{'steps averaged':32s}" + "".join(f"{c['count']:>26d}" for c in columns.values()))
    if full["attention"] <= 0:
        print("attention came out <= 0: it is below this machine's step-to-step noise (a busy machine?)")


def _decoding(w: Workload, prompts: list[list[int]], max_tokens: int) -> Workload:
    """The prompts as a workload of ``max_tokens`` tokens each, EOS ignored (what build_llm sizes its KV pool for)."""
    return Workload(w.name, w.model, prompts, [max_tokens] * len(prompts), ignore_eos=True)


# -- bf16 against fp32 decode steps -------------------------------------------------------------------------------
def dtype_sweep(w: Workload, device: str, kernels: str, batches: list[int], context: int, rounds: int) -> None:
    """Decode step time at each batch size in float32 and bfloat16 (two engines, alternated, best of rounds)."""
    from pagebatch.engine.dtypes import cpu_has_native_bf16

    steps = 4
    growth = steps * rounds * len(batches)
    start = max(16, context - growth // 2)  # contexts run from start to start + growth: ~context on average
    prompts = fixed_length_prompts(w.prompts, max(batches), start)
    budget = decode_budget(prompts, growth)
    engines = {}
    for dtype in ("float32", "bfloat16"):
        engine = build_llm(_decoding(w, prompts, budget), device, dtype, kernels).engine
        engines[dtype] = (engine, fill_engine(engine, prompts, budget))
    best: dict[tuple[int, str], float] = {}
    for batch in sorted(batches, reverse=True):
        for engine, ids in engines.values():
            while len(ids) > batch:
                engine.abort_request(ids.pop())
        for _ in range(rounds):
            for dtype, (engine, _) in engines.items():
                ms = decode_steps(engine, device, steps)
                best[batch, dtype] = min(best.get((batch, dtype), float("inf")), ms)
    longest = start + growth + sum(map(len, prompts)) // 2048  # early requests decode while later ones prefill
    print(f"\ndecode step time, bf16 vs fp32, contexts ~{start}-{longest} tokens, best of {rounds} x {steps} steps")
    print(f"{'batch':>6s} {'fp32 ms':>10s} {'bf16 ms':>10s} {'bf16/fp32':>10s}")
    for batch in sorted(batches):
        f32, b16 = best[batch, "float32"], best[batch, "bfloat16"]
        print(f"{batch:6d} {f32:10.2f} {b16:10.2f} {b16 / f32:9.2f}x" + ("  bf16 faster" if b16 < f32 else ""))
    faster = all(best[b, "bfloat16"] < best[b, "float32"] for b in batches)
    print(f"bf16 decode step faster than fp32 at every batch size: {'yes' if faster else 'no'}")
    if device == "cpu":
        native = cpu_has_native_bf16()
        print(f"this CPU computes bf16 natively (AVX512-BF16 / AMX): {'yes' if native else 'no'}"
              + ("" if native else " - bf16 matmuls are emulated through fp32 here, so slower bf16 is expected"))


# -- a mixture of experts against the dense model with its active parameters ---------------------------------------
DENSE_OF = {"mixtral": "mistral", "qwen3_moe": "qwen3"}  # the dense family with the same attention


def moe_vs_dense(w: Workload, device: str, dtype: str, kernels: str, arch: str, batch: int, context: int, rounds: int,
                 tmp: str) -> None:
    """Decode step time of the workload's MoE model (8 experts, top-2) and of a dense model whose one MLP is as wide
    as the two experts a token uses, at ``batch`` sequences of ~``context`` tokens, alternated, best of rounds."""
    if arch not in DENSE_OF:
        raise SystemExit(f"--moe-vs-dense compares {', '.join(DENSE_OF)} with their dense family; got --arch {arch}")
    moe = sizes_for("bench-moe")
    dense = {k: v for k, v in moe.items() if k not in ("num_experts", "experts_per_token")}
    dense["intermediate_size"] = moe["intermediate_size"] * moe["experts_per_token"]
    paths = {f"{arch} (MoE)": w.model, f"{DENSE_OF[arch]} (dense)": str(make_checkpoint(Path(tmp) / "dense", DENSE_OF[arch], **dense))}
    steps = 4
    growth = steps * rounds
    start = max(16, context - growth // 2)
    prompts = fixed_length_prompts(w.prompts, batch, start)
    budget = decode_budget(prompts, growth)
    engines = {}
    for name, path in paths.items():
        engine = build_llm(_decoding(Workload(w.name, path, w.prompts, w.max_tokens, True), prompts, budget), device,
                           dtype, kernels).engine
        fill_engine(engine, prompts, budget)
        engines[name] = engine
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, engine in engines.items():
            best[name] = min(best.get(name, float("inf")), decode_steps(engine, device, steps))
    print(f"\ndecode step time, {batch} sequences, contexts ~{start}-{start + growth} tokens, {dtype}, kernels={kernels}, "
          f"best of {rounds} x {steps} steps")
    for name, engine in engines.items():
        model = engine.model
        print(f"{name:18s} {best[name]:8.2f} ms/step  ({model.num_parameters(active=True) / 1e6:.1f}M active, "
              f"{model.num_parameters() / 1e6:.1f}M total params)")
    (moe_name, moe_ms), (dense_name, dense_ms) = best.items()
    print(f"MoE / dense decode step: {moe_ms / dense_ms:.2f}x")


# -- structured decoding ------------------------------------------------------------------------------------------
def structured(w: Workload, device: str, dtype: str, kernels: str, rounds: int, max_tokens: int) -> None:
    """Tokens/s of the same prompts with a JSON schema and without (each request then generating as many tokens
    as its schema answer had, EOS ignored, so both sides run the same steps), alternated, best of rounds."""
    from pagebatch.engine.structured import GrammarSpec

    llm = build_llm(_decoding(w, w.prompts, max_tokens), device, dtype, kernels)
    spec = GrammarSpec("json_schema", json.dumps(STRUCTURED_SCHEMA), source="response_format")
    schema = SamplingParams(temperature=0, max_tokens=max_tokens, structured=spec)
    llm.generate(w.prompts[:2], SamplingParams(temperature=0, max_tokens=4, structured=spec))  # compile, warm up
    best: dict[str, tuple[float, int, int]] = {}
    outs = None
    for _ in range(rounds):
        for name in ("with schema", "without"):
            params = schema if name == "with schema" else [
                SamplingParams(temperature=0, max_tokens=len(o.token_ids), ignore_eos=True) for o in outs]
            llm.engine.blocks.reset_prefix_cache()
            steps = llm.engine.stats().num_steps
            _sync(device)
            t = time.perf_counter()
            result = llm.generate(w.prompts, params)
            _sync(device)
            elapsed = time.perf_counter() - t
            if name == "with schema":
                outs = result
            tokens = sum(len(o.token_ids) for o in result)
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, tokens, llm.engine.stats().num_steps - steps)
    print(f"\nstructured decoding, {len(w.prompts)} requests, greedy, schema: {json.dumps(STRUCTURED_SCHEMA)}")
    for name, (seconds, tokens, steps) in best.items():
        print(f"{name:12s} {tokens / seconds:10.1f} output tok/s ({tokens} tokens, {steps} steps, "
              f"{1e3 * seconds / steps:.1f} ms/step, best of {rounds})")
    (ws, wt, _), (ns, nt, _) = best["with schema"], best["without"]
    print(f"with / without schema: {(wt / ws) / (nt / ns):.2f}x output tok/s")
    valid = sum(schema_valid(o.text) for o in outs)
    cut = sum(o.finish_reason == "length" for o in outs)
    print(f"schema outputs that parse and validate: {valid}/{len(outs)} ({100 * valid / len(outs):.0f}%); "
          f"{cut} hit max_tokens={max_tokens} (cut answers do not validate)")
    for o in outs[:2]:
        print(f"  e.g. {o.text[:200]}")


# -- batch-1 decode bandwidth ------------------------------------------------------------------------------------
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
    weights = num_params(llm) * elem
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("synthetic", "summarize", "labeling", "embeddings"), default="synthetic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=None, help="requests (default 48; 64 for summarize; inputs, 5000, for embeddings)")
    ap.add_argument("--max-tokens", type=int, default=128, help="summarize: max new tokens per request (128)")
    ap.add_argument("--model", default=None,
                    help="checkpoint dir (default: a random 28M Llama made here; SmolLM2-135M-Instruct for summarize)")
    ap.add_argument("--skip", default="", help="comma list of what to skip: static,continuous,compare (compare: the "
                                                "whole throughput comparison, e.g. to run only --dtype-sweep)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-cpp", default=None, metavar="DIR",
                    help="also llama.cpp's llama-server from DIR/bin (scripts/build_llamacpp.sh), on the GGUF model")
    ap.add_argument("--llama-kv", default="f16", help="llama-server's KV cache type (its default f16; f32, bf16)")
    ap.add_argument("--decode-bandwidth", action="store_true", help="batch-1 decode bandwidth of a ~0.5B model instead")
    ap.add_argument("--bandwidth-preset", default="0.5b", help="0.5b, or a make_model preset for a quick CPU run")
    ap.add_argument("--breakdown", action="store_true", help="also print where pagebatch's step time goes")
    ap.add_argument("--breakdown-context", type=int, default=400, help="context of the breakdown's decode steps")
    ap.add_argument("--dtype-sweep", action="store_true", help="also: bf16 vs fp32 decode step time per batch size")
    ap.add_argument("--sweep-batches", default="1,8,32,64,128")
    ap.add_argument("--sweep-context", type=int, default=256)
    ap.add_argument("--arch", default="llama", help="synthetic workload: the random model's architecture (llama; "
                                                     "mixtral, qwen3_moe or olmoe: 8 experts, top-2, as many active params)")
    ap.add_argument("--moe-vs-dense", action="store_true",
                    help="also: MoE (--arch, default mixtral) vs dense decode step time at --moe-batch sequences")
    ap.add_argument("--moe-batch", type=int, default=48)
    ap.add_argument("--structured", action="store_true", help="also: tokens/s with a JSON schema vs without")
    ap.add_argument("--structured-max-tokens", type=int, default=STRUCTURED_MAX_TOKENS)
    ap.add_argument("--kernels", default="auto",
                    help="engine kernel choices to compare, e.g. torch,cpu (alternated, best of --rounds; the first "
                         "is the one compared with transformers and used by the other modes)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every system, alternated (best of)")
    ap.add_argument("--hf-rows", type=int, default=64, help="labeling: rows transformers runs (the first ones)")
    ap.add_argument("--hf-batch", type=int, default=16, help="labeling: transformers' generate batch")
    ap.add_argument("--llama-slots", type=int, default=16, help="labeling: llama-server's parallel slots")
    ap.add_argument("--llama-rows", type=int, default=None, help="labeling: rows llama-server runs (default all)")
    args = ap.parse_args(argv)
    defaults = {"summarize": 64, "labeling": 2000, "embeddings": 5000}
    args.num_prompts = args.num_prompts or defaults.get(args.workload, 48)
    labeling = args.workload == "labeling"  # its dtype: the engine's auto (bf16 on CPUs that compute it)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "auto" if labeling else "float32")
    if args.moe_vs_dense and args.arch == "llama":
        args.arch = "mixtral"
    return args


def make_workload(args: argparse.Namespace, tmp: str) -> Workload:
    if args.workload == "summarize":
        return summarize_workload(args.model or smollm2_dir(), args.num_prompts, args.seed, args.max_tokens)
    from pagebatch.engine.make_model import MOE_ARCHITECTURES

    preset = "bench-moe" if args.arch in MOE_ARCHITECTURES else "bench"
    path = args.model or str(make_checkpoint(Path(tmp) / f"bench-{args.arch}", args.arch, **sizes_for(preset)))
    return synthetic_workload(path, args.num_prompts, args.seed)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workload == "embeddings":  # its own systems and report (jobs/bench/embeddings.py)
        from pagebatch.jobs.bench.embeddings import run_embeddings

        run_embeddings(args, matmul_peak_flops)
        return
    if args.workload == "labeling":  # its own systems and report (jobs/bench/labeling.py)
        from pagebatch.jobs.bench.labeling import run as run_labeling

        run_labeling(args, matmul_peak_flops)
        return
    if args.decode_bandwidth:
        decode_bandwidth(args.device, args.dtype, steps=128, preset=args.bandwidth_preset)
        return
    tmp = tempfile.TemporaryDirectory()
    w = make_workload(args, tmp.name)
    kernels = args.kernels.split(",")
    skip = set(filter(None, args.skip.split(",")))
    print(f"workload {w.name}: {Path(w.model).name}, {len(w.prompts)} prompts ({w.num_prompt_tokens} prompt tokens), "
          f"{'exactly' if w.ignore_eos else 'at most'} {sum(w.max_tokens)} output tokens"
          f"{'' if w.ignore_eos else ' (greedy, EOS on)'}, device={args.device}, dtype={args.dtype}, "
          f"threads={args.threads}")
    if "compare" not in skip:
        llama = LlamaServer(args.llama_cpp, w, args.dtype, args.threads, args.llama_kv) if args.llama_cpp else None
        try:
            best = compare(w, args.device, args.dtype, kernels, skip, args.rounds, llama)
        finally:
            if llama is not None:
                llama.close()
        report_compare(best, w, args.rounds)
        gc.collect()
        report_work(w, next(iter(best.values())), active_params(w.model), args.device, args.dtype)
    if args.breakdown:
        breakdown(w, args.device, args.dtype, kernels[0], args.num_prompts, args.breakdown_context, args.rounds)
    if args.dtype_sweep:
        batches = [int(b) for b in args.sweep_batches.split(",")]
        dtype_sweep(w, args.device, kernels[0], batches, args.sweep_context, args.rounds)
    if args.moe_vs_dense:
        moe_vs_dense(w, args.device, args.dtype, kernels[0], args.arch, args.moe_batch, args.sweep_context, args.rounds,
                     tmp.name)
    if args.structured:
        structured(w, args.device, args.dtype, kernels[0], args.rounds, args.structured_max_tokens)


if __name__ == "__main__":
    main()
