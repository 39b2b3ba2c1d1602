"""Shared pieces of scripts/gpu_check.py: section records, sizes, timing and engine construction.

Only the engine's public API (``pagebatch.engine.llm`` and friends), ``pagebatch.engine.make_model`` and the kernels'
public functions are used here; anything deeper is read best-effort with getattr and reported as
unknown when it has moved.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository (tests/kernels)

# Every section the report carries, in the order the summary prints them.
SECTIONS = (
    "env", "kernel_tests", "parity", "cuda_graphs", "torch_backend", "models",
    "hbm_bandwidth", "matmul_peak", "attention",
    "throughput_small", "decode_small", "prefill_small", "moe",
    "throughput_large", "decode_large", "prefill_large",
)
# Which child process writes which sections (the driver runs env and kernel_tests itself).
CHILDREN = {
    "correctness": ("parity", "cuda_graphs", "torch_backend"),
    "models": ("models",),
    "limits": ("hbm_bandwidth", "matmul_peak", "attention"),
    "small": ("throughput_small", "decode_small", "prefill_small"),
    "moe": ("moe",),
    "large": ("throughput_large", "decode_large", "prefill_large"),
}

SMALL_SHAPE = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                   vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0)  # Qwen2.5-0.5B-like
LARGE_SHAPE = dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, intermediate_size=14336,
                   vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0)  # Llama-3-8B-like


ARCHS = ("llama", "mistral", "qwen2", "qwen3")
NEW_ARCHS = ("qwen3_moe", "mixtral", "olmoe", "gemma3", "phi3")  # mixtures of experts, sliding windows, LongRoPE
# Per-architecture options of the parity checkpoints: Gemma 3's window shorter than most prompts; Phi-3 as the
# 128k variants are (LongRoPE, past position 64 here) with Phi-4-mini's partial rotary.
PARITY_EXTRA = {"gemma3": dict(sliding_window=40),
                "phi3": dict(rope_scaling="longrope", max_position_embeddings=2048, partial_rotary_factor=0.75)}


def plan(quick: bool, cuda: bool, small_requests: int | None = None, large_requests: int | None = None) -> dict:
    """Sizes of everything: the real run on a GPU, or tiny shapes for --quick / CPU dry runs."""
    if not quick:
        return dict(
            parity_runs={"float32": ARCHS + NEW_ARCHS, "bfloat16": ARCHS + ("qwen3_moe", "gemma3")},
            parity_shape=dict(hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2),
            parity_lengths=(1, 2, 7, 16, 17, 33, 64, 100, 129, 255, 400, 700), parity_prefix=300, parity_new=24,
            graph_prompts=32, graph_new=(4, 40), torch_runs={"float32": ("llama", "qwen3"), "bfloat16": ("llama", "qwen3")},
            small=("qwen2", SMALL_SHAPE), large=("llama", LARGE_SHAPE), grow_large=True,
            small_requests=small_requests or 256, large_requests=large_requests or 64, prompt_len=None, out_len=None,
            prefix_len=512, suffix=(16, 128), static_batches=(64, 32), kv_small=4 << 30, kv_large=16 << 30,
            max_model_len=2048, hbm_bytes=2 << 30, matmul_n=8192, matmul_s=2.0,
            attn=dict(heads=32, kv_heads=8, head_dim=128, block_size=16,
                      cases=[("prefill", 1, 4096, 4096), ("prefill", 4, 1024, 1024), ("prefill", 16, 512, 512),
                             ("decode", 1, 16384, 1), ("decode", 4, 8192, 1), ("decode", 32, 2048, 1),
                             ("decode", 128, 1024, 1), ("decode", 256, 512, 1)]),
            decode_steps_small=128, decode_steps_large=64, prefill_small=(16, 1024), prefill_large=(8, 1024),
            # a Qwen3-MoE-like mixture (32 experts, top-4; ~230M parameters, ~40M active) and its dense twin
            moe_shape=dict(hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4, intermediate_size=384,
                           vocab_size=32000, num_experts=32, experts_per_token=4),
            moe_requests=128, moe_batch=48, moe_context=256, moe_rounds=5,
            # seconds a system needs at least, else it is skipped for the section's budget
            min_pb_small=20, min_pb_large=45, min_static_small=8, min_static_large=15, min_cb_small=30, min_cb_large=45,
        )
    tiny = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    return dict(
        # two of the new families (a mixture of experts, a sliding window) keep the CPU rehearsal inside its minute
        parity_runs={"float32": ARCHS + ("qwen3_moe", "gemma3"), "bfloat16": ("qwen3",)}, parity_shape=tiny,
        parity_lengths=(1, 7, 33, 70), parity_prefix=24, parity_new=6,
        graph_prompts=6, graph_new=(2, 8), torch_runs={"float32": ("llama",)},
        small=("qwen2", dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                             vocab_size=1024, tie_word_embeddings=True, rope_theta=1000000.0)),
        large=("llama", dict(hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=256,
                             vocab_size=1024, tie_word_embeddings=False, rope_theta=500000.0)), grow_large=True,
        small_requests=small_requests or 8, large_requests=large_requests or 6, prompt_len=48, out_len=8,
        prefix_len=32, suffix=(4, 16), static_batches=(8, 4), kv_small=32 << 20, kv_large=32 << 20,
        max_model_len=256, hbm_bytes=(256 if cuda else 32) << 20, matmul_n=256 if not cuda else 2048, matmul_s=0.2,
        attn=dict(heads=4, kv_heads=2, head_dim=32, block_size=16,
                  cases=[("prefill", 1, 128, 128), ("decode", 4, 256, 1), ("decode", 8, 128, 1)]),
        decode_steps_small=8, decode_steps_large=6, prefill_small=(2, 64), prefill_large=(2, 64),
        moe_shape=dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=32, vocab_size=1024,
                       num_experts=8, experts_per_token=2),
        moe_requests=6, moe_batch=8, moe_context=32, moe_rounds=2,
        min_pb_small=1, min_pb_large=1, min_static_small=1, min_static_large=1, min_cb_small=1, min_cb_large=1,
    )


class Skip(Exception):
    """Raised inside a section to record it as skipped with a reason."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Section:
    def __init__(self, recorder: Recorder, name: str, budget_s: float) -> None:
        self.recorder, self.name = recorder, name
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.rec = {"status": "running", "budget_s": round(budget_s, 1), "duration_s": 0.0, "figures": {}, "details": {}}
        self.errors: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def figure(self, key: str, value) -> None:
        """A number for the report; anything not a finite number goes to details.non_numeric instead."""
        if _number(value):
            self.rec["figures"][key] = round(float(value), 6) if isinstance(value, float) else value
        else:
            self.rec["details"].setdefault("non_numeric", {})[key] = repr(value)
        self.save()

    def detail(self, key: str, value) -> None:
        self.rec["details"][key] = value
        self.save()

    def error(self, message: str) -> None:
        """A failure that lets the section go on (one system of several); the section ends as fail."""
        log(f"[{self.name}] ERROR {message}")
        self.errors.append(message)
        self.rec["details"]["errors"] = self.errors
        self.save()

    def save(self) -> None:
        self.rec["duration_s"] = round(time.monotonic() - self.start, 2)
        self.recorder.flush()


class Recorder:
    """The sections one process writes, saved to a JSON file after every change (a kill keeps what was done)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict] = {}

    def flush(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def run(self, name: str, budget_s: float, fn: Callable[[Section], None]) -> Section:
        sec = Section(self, name, max(budget_s, 0.0))
        self.data[name] = sec.rec
        sec.save()
        log(f"[{name}] start (budget {budget_s:.0f} s)")
        try:
            if budget_s <= 0:
                raise Skip("no time left in the run's budget")
            fn(sec)
            sec.rec["status"] = "fail" if sec.errors else "pass"
            if sec.errors:
                sec.rec["error"] = "; ".join(sec.errors)[:2000]
        except Skip as exc:
            sec.rec["status"], sec.rec["reason"] = "skipped", str(exc)
            if sec.errors:
                sec.rec["status"], sec.rec["error"] = "fail", "; ".join(sec.errors)[:2000]
        except BaseException as exc:  # noqa: BLE001 - a section's failure is recorded, never fatal
            sec.rec["status"], sec.rec["error"] = "fail", f"{type(exc).__name__}: {exc}"[:2000]
            sec.rec["details"]["traceback"] = traceback.format_exc()[-4000:]
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            sec.save()
            free_memory()
        log(f"[{name}] {sec.rec['status']} in {sec.rec['duration_s']:.1f} s"
            + (f": {sec.rec.get('reason') or sec.rec.get('error')}" if sec.rec["status"] != "pass" else ""))
        return sec


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, min_s: float = 0.05) -> float:
    """Median seconds of one call: triton.testing.do_bench on CUDA (bench_kernels.bench), a timed loop elsewhere."""
    if device.startswith("cuda"):
        from pagebatch.jobs.bench.kernels import bench

        return bench(fn) / 1e3
    fn()
    times: list[float] = []
    end = time.perf_counter() + min_s
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


# -- the engine, through its public API -----------------------------------------------------------------

def engine_fields() -> set[str]:
    from pagebatch.engine.config import EngineConfig

    return {f.name for f in dataclasses.fields(EngineConfig)}


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def make_llm(path, kernels: str | None = None, **options):
    """LLM(path, **options); kernels through EngineConfig.kernels where that field exists, else PAGEBATCH_KERNELS.

    Options EngineConfig no longer has are dropped (and logged) rather than failing the run.
    """
    from pagebatch.engine.llm import LLM

    fields = engine_fields()
    for key in [k for k in options if k not in fields]:
        log(f"EngineConfig has no field {key!r}: left out")
        options.pop(key)
    env_value = None
    if kernels is not None:
        if "kernels" in fields:
            options["kernels"] = kernels
        else:
            env_value = kernels
    with _env("PAGEBATCH_KERNELS", env_value):
        return LLM(str(path), **options)


def _dig(obj, *names):
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def graphs_active(llm) -> bool | None:
    """Whether decode steps replay CUDA graphs (best effort: None when the engine's internals moved)."""
    runner = _dig(llm, "engine", "runner")
    if runner is None or not hasattr(runner, "decode_graphs"):
        return None
    return runner.decode_graphs is not None


def kernel_backend(llm) -> str | None:
    """'triton' or 'torch' as the engine's model runs it (best effort)."""
    model = _dig(llm, "engine", "model")
    for names in (("kernels", "name"), ("backend", "name")):
        value = _dig(model, *names)
        if isinstance(value, str):
            return value
    ops = _dig(model, "ops")
    name = getattr(ops, "__name__", "") if ops is not None else ""
    return "triton" if name.endswith("triton_ops") else "torch" if name.endswith("reference") else None


def greedy(max_tokens: int, **kw):
    from pagebatch.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


# -- checkpoints ------------------------------------------------------------------------------------------

def safetensors_index(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (dtype, shape)} from the safetensors headers, without reading the weights."""
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        out.update({name: (meta["dtype"], meta["shape"]) for name, meta in header.items()})
    return out


ELEM = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1}


def checkpoint_stats(path: Path) -> dict:
    """Parameter counts and bytes a decode step reads, from the checkpoint alone."""
    index = safetensors_index(path)
    cfg = json.loads((Path(path) / "config.json").read_text())
    numel = {name: math.prod(shape) for name, (_, shape) in index.items()}
    nbytes = {name: numel[name] * ELEM.get(dt, 2) for name, (dt, _) in index.items()}
    tied = "lm_head.weight" not in index
    embed = next((n for n in index if n.endswith("embed_tokens.weight")), None)
    # A decode step reads every weight once, except the embedding table when untied (one row per token).
    step_bytes = sum(nbytes.values()) - (0 if tied or embed is None else nbytes[embed])
    layer_matmul = sum(numel[n] for n, (_, s) in index.items() if ".layers." in n and len(s) == 2)
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    return dict(
        params=sum(numel.values()), weight_bytes=sum(nbytes.values()), decode_weight_bytes=step_bytes,
        layer_matmul_params=layer_matmul, vocab=cfg["vocab_size"], hidden=hidden, layers=cfg["num_hidden_layers"],
        heads=heads, kv_heads=cfg.get("num_key_value_heads", heads), head_dim=head_dim, tied=tied,
        elem_bytes=ELEM.get(next(iter(index.values()))[0], 2),
    )


def random_prompts(n: int, lengths: tuple[int, int] | list[int], vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lens = lengths if isinstance(lengths, list) else [rng.randint(*lengths) for _ in range(n)]
    return [[rng.randrange(10, vocab) for _ in range(k)] for k in lens[:n]]
