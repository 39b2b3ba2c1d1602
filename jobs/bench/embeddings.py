"""--workload embeddings: `pagebatch run` on /v1/embeddings lines against sentence-transformers' ``encode``.

    python scripts/bench_engine.py --workload embeddings --rounds 2                  # 5,000 inputs, both configurations
    python scripts/bench_engine.py --workload embeddings --skip default --dtype bfloat16   # only both-bf16

Inputs: --num-prompts (default 5,000) texts of mixed length cut from Python's documentation (pydoc_data's prose),
each from its own starting word (no shared prefixes for pagebatch's prefix cache to skip), 5-200 tokens,
log-uniform (mostly short, as embedding inputs are), chosen deterministically by --seed. The checkpoint (default
SmolLM2-135M-Instruct, converted) is pooled as pagebatch reads it from its files (engine.models.pooling_config:
last token, L2-normalized, for a causal checkpoint without a sentence-transformers description), and
sentence-transformers is built with that same pooling (Transformer + Pooling + Normalize when pagebatch normalizes),
on the plain texts (its Transformer pinned to the text modality: by default it would render them through the
checkpoint's chat template first).

Systems, alternated round by round, each one's best of --rounds:
- pagebatch: the inputs as /v1/embeddings lines of INPUTS_PER_LINE (16) inputs each (a JSONL file), through
  ``pagebatch run``'s own code in this process (jobs.commands.local_run.run_local); its time excludes loading the
  model, as `pagebatch run` reports it; the vectors are read back from its output.jsonl.
- sentence-transformers: ``SentenceTransformer.encode(texts)`` at its default batch size (32).

Configurations (--skip default / --skip same leaves one out):
- default: each system's own default: pagebatch ``--dtype auto`` (bfloat16 on a CPU with AVX512-BF16 or AMX, else
  float32), sentence-transformers as the checkpoint's config says (float32 here).
- same: both in --dtype (float32 unless given).
Reported: inputs/s of each, their ratio, min and mean cosine of the vectors (the >= 0.9999 check holds in float32),
and pagebatch's work: 2 x non-embedding params x tokens + attention, as a share of the measured matmul peak.
"""
from __future__ import annotations

import argparse
import base64
import gc
import json
import math
import random
import re
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pagebatch.jobs.bench.workloads import _prose_paragraphs, best_of_rounds, smollm2_dir, workload_flops

DEFAULT_INPUTS = 5000
MIN_TOKENS, MAX_TOKENS = 5, 200
INPUTS_PER_LINE = 16  # inputs in one /v1/embeddings line (a client batching its texts)
MIN_COSINE = 0.9999  # float32 against float32
TARGETS = {"default": 2.0, "same": 1.3}  # pagebatch / sentence-transformers inputs/s
ST_METHODS = {"last": "lasttoken", "mean": "mean", "cls": "cls"}  # pagebatch pooling -> sentence-transformers'
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
PeakFn = Callable[..., float]  # (device, dtype, n=, m=, k=, seconds=) -> FLOP/s


# -- the inputs ---------------------------------------------------------------------------------------------------
def doc_words() -> list[str]:
    """The words of Python's documentation's prose paragraphs (pydoc_data), in order."""
    from pydoc_data.topics import topics

    return [word for name in sorted(topics) for paragraph in _prose_paragraphs(topics[name])
            for word in paragraph.split()]


def embedding_texts(tokenizer, count: int, seed: int, min_tokens: int = MIN_TOKENS,
                    max_tokens: int = MAX_TOKENS) -> list[str]:
    """``count`` texts of consecutive words of the documentation, each from its own starting word (so no two
    share a first token block, and a prefix cache finds nothing to reuse but repeated prose), cut to a
    log-uniform target length in [min_tokens, max_tokens] tokens at a token boundary of the tokenizer's offsets."""
    words = doc_words()
    if count > len(words):
        raise SystemExit(f"pydoc_data holds {len(words)} words: ask for at most that many inputs")
    rng = random.Random(seed)
    starts = rng.sample(range(len(words)), count)
    targets = [round(math.exp(rng.uniform(math.log(min_tokens), math.log(max_tokens)))) for _ in range(count)]
    # a word is at least one token: target words hold at least target tokens
    spans = [" ".join(words[(start + i) % len(words)] for i in range(target)) for start, target in zip(starts, targets)]
    encoded = tokenizer(spans, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [text[: offsets[min(target, len(offsets)) - 1][1]].strip()
            for text, offsets, target in zip(spans, encoded, targets)]


def write_embedding_lines(path: Path, model: str, texts: list[str] | list[str | list[int]], per_line: int) -> int:
    """The texts (or token-id lists) as /v1/embeddings batch lines of ``per_line`` inputs each, in order; the
    number of lines."""
    lines = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(0, len(texts), per_line):
            body = {"model": model, "input": texts[i : i + per_line]}
            f.write(json.dumps({"custom_id": f"emb-{lines}", "method": "POST", "url": "/v1/embeddings",
                                "body": body}) + "\n")
            lines += 1
    return lines


def read_embedding_results(out_dir: Path, lines: int) -> torch.Tensor:
    """Every input's vector from a run's output.jsonl, in input order (lines as write_embedding_lines made them)."""
    by_line: dict[str, list] = {}
    errors = (out_dir / "errors.jsonl").read_text(encoding="utf-8").strip()
    if errors:
        raise RuntimeError(f"pagebatch failed embedding lines: {errors.splitlines()[0][:300]}")
    with (out_dir / "output.jsonl").open(encoding="utf-8") as f:
        for raw in f:
            record = json.loads(raw)
            data = sorted(record["response"]["body"]["data"], key=lambda d: d["index"])
            by_line[record["custom_id"]] = [_vector(d["embedding"]) for d in data]
    return torch.tensor([v for i in range(lines) for v in by_line[f"emb-{i}"]], dtype=torch.float32)


def _vector(value: list[float] | str) -> list[float]:
    if isinstance(value, str):  # encoding_format base64: little-endian float32
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return value


# -- the systems ------------------------------------------------------------------------------------------------
@dataclass
class EmbedRun:
    seconds: float
    vectors: torch.Tensor  # [inputs, dims], float32


def pagebatch_embed(model: str, input_path: Path, lines: int, dtype: str, kernels: str, out_dir: Path) -> EmbedRun:
    """`pagebatch run INPUT --model M --dtype D` in this process; its reported time (all but loading the model)."""
    import shutil

    from pagebatch.jobs.commands.local_run import run_local
    from pagebatch.jobs.engine_host import EngineOptions
    from pagebatch.jobs.settings import get_settings

    shutil.rmtree(out_dir, ignore_errors=True)
    report = run_local(get_settings(), input_path, model, out_dir, options=EngineOptions(dtype=dtype, kernels=kernels),
                       show_progress=False)
    if report.batch.status != "completed":
        raise RuntimeError(f"pagebatch run ended {report.batch.status}: {report.batch.errors}")
    vectors = read_embedding_results(out_dir, lines)
    gc.collect()
    return EmbedRun(report.run_seconds, vectors)


def sentence_transformer(model: str, method: str, normalize: bool, dtype: str | None):
    """sentence-transformers on the checkpoint with pagebatch's pooling; ``dtype`` None: as its config says."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    kwargs = {} if dtype is None else {"model_kwargs": {"dtype": getattr(torch, dtype)}}
    # Plain text in, as pagebatch embeds it: by default sentence-transformers renders a text through the tokenizer's
    # chat template when it has one (SmolLM2-Instruct's adds a system prompt), which would embed other tokens.
    word = Transformer(model, modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                       module_output_name="token_embeddings", **kwargs)
    modules = [word, Pooling(word.get_embedding_dimension(), ST_METHODS[method])] + ([Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device="cpu")


def st_embed(st, texts: list[str]) -> EmbedRun:
    """``encode`` at its default batch size; the warm-up outside the time."""
    st.encode(texts[:8], convert_to_tensor=True)
    t = time.perf_counter()
    vectors = st.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    return EmbedRun(time.perf_counter() - t, vectors.float())


# -- one configuration --------------------------------------------------------------------------------------------
@dataclass
class Config:
    name: str  # "default" or "same"
    pagebatch_dtype: str  # what pagebatch is asked for ("auto" in the default configuration)
    st_dtype: str | None  # None: sentence-transformers' default


def run_config(cfg: Config, model: str, texts: list[str], input_path: Path, lines: int, method: str,
               normalize: bool, kernels: str, rounds: int, work: Path) -> tuple[dict[str, EmbedRun], str]:
    """Each system's best run of the configuration, and the dtype sentence-transformers ran in."""
    st = sentence_transformer(model, method, normalize, cfg.st_dtype)
    systems = {
        "pagebatch run": lambda: pagebatch_embed(model, input_path, lines, cfg.pagebatch_dtype, kernels, work / "out"),
        "sentence-transformers encode": lambda: st_embed(st, texts),
    }
    best = best_of_rounds(systems, rounds)
    st_dtype = str(next(st.parameters()).dtype).removeprefix("torch.")
    del st
    gc.collect()
    return best, st_dtype


def resolved_dtype(requested: str) -> str:
    """What pagebatch's engine runs for ``--dtype`` on this CPU (auto: bf16 where the CPU computes it natively)."""
    from pagebatch.engine.dtypes import cpu_has_native_bf16

    if requested != "auto":
        return requested
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def cpu_flags() -> str:
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        return "unknown"
    return ", ".join(f for f in CPU_FLAGS if f in flags) or "none of " + ", ".join(CPU_FLAGS)


def embedding_flops(model: str, token_counts: list[int]) -> tuple[float, int]:
    """pagebatch's work on the inputs: 2 x params x tokens (the token-embedding lookup and the unused lm_head left
    out) + attention; and the params counted."""
    from pagebatch.engine.models import ModelSpec, load_hf_config
    from pagebatch.jobs.bench.workloads import checkpoint_params

    config = load_hf_config(Path(model))
    spec = ModelSpec.from_hf_config(config)
    params = checkpoint_params(model) - config.vocab_size * config.hidden_size * (
        1 if getattr(config, "tie_word_embeddings", False) else 2)
    return workload_flops(params, spec.num_layers, spec.num_heads, spec.head_dim, token_counts,
                          [0] * len(token_counts)), params


def matmul_peak(model: str, dtype: str, matmul_peak_flops: PeakFn) -> tuple[str, float]:
    """The best measured matmul FLOP/s of ``dtype`` over a square and the model's prefill shapes."""
    from pagebatch.engine.models import ModelSpec, load_hf_config

    spec = ModelSpec.from_hf_config(load_hf_config(Path(model)))
    h, i = spec.hidden_size, spec.intermediate_size
    shapes = {"1024x1024x1024": (1024, 1024, 1024), f"2048x{h}x{i}": (2048, h, i), f"2048x{i}x{h}": (2048, i, h),
              f"2048x{h}x{h}": (2048, h, h)}
    peaks = {name: matmul_peak_flops("cpu", getattr(torch, dtype), n=n, m=m, k=k, seconds=0.5)
             for name, (m, k, n) in shapes.items()}
    best = max(peaks, key=peaks.get)
    return best, peaks[best]


def report_config(cfg: Config, best: dict[str, EmbedRun], st_dtype: str, rounds: int, num_tokens: int, flops: float,
                  params: int, model: str, peak_fn: PeakFn) -> bool:
    pb_dtype = resolved_dtype(cfg.pagebatch_dtype)
    (pb_name, pb), (st_name, st) = best.items()
    n = pb.vectors.shape[0]
    print(f"\n[{cfg.name}] pagebatch --dtype {cfg.pagebatch_dtype} ({pb_dtype}) vs sentence-transformers "
          f"{'default' if cfg.st_dtype is None else '--dtype ' + cfg.st_dtype} ({st_dtype}), batch size 32")
    for name, r in ((pb_name, pb), (st_name, st)):
        print(f"  {name:30s} {n / r.seconds:9.1f} inputs/s  ({num_tokens / r.seconds:8.0f} tokens/s, {r.seconds:.2f} s, "
              f"best of {rounds})")
    ratio = st.seconds / pb.seconds
    target = TARGETS[cfg.name]
    held = ratio >= target
    print(f"  pagebatch / sentence-transformers: {ratio:.2f}x inputs/s (target >= {target}x: "
          f"{'held' if held else 'NOT held'})")
    cos = F.cosine_similarity(pb.vectors, st.vectors, dim=1)
    both_fp32 = pb_dtype == st_dtype == "float32"
    line = f"  cosine per input: min {cos.min().item():.6f}, mean {cos.mean().item():.6f} over {n} inputs"
    if both_fp32:
        ok = cos.min().item() >= MIN_COSINE
        held = held and ok
        line += f" (float32 both: >= {MIN_COSINE} {'held' if ok else 'NOT held'})"
    print(line)
    name, peak = matmul_peak(model, pb_dtype, peak_fn)
    achieved = flops / pb.seconds
    print(f"  pagebatch work: {flops / 1e9:.0f} GFLOP ({params / 1e6:.1f}M params x 2 x {num_tokens} tokens + "
          f"attention), {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the {pb_dtype} matmul peak "
          f"measured here ({peak / 1e9:.1f} GFLOP/s, {name})")
    return held


def run_embeddings(args: argparse.Namespace, peak_fn: PeakFn) -> None:
    """The embeddings workload with jobs/bench/engine.py's arguments (--num-prompts inputs, --rounds, --dtype for
    the same-dtype configuration, --skip default|same, --kernels' first choice, --model, --seed); ``peak_fn``
    measures a matmul's FLOP/s (engine.py's matmul_peak_flops, passed in: engine.py imports this module)."""
    from transformers import AutoTokenizer

    from pagebatch.engine.models import load_hf_config
    from pagebatch.engine.models.pooling_config import read_pooling
    from pagebatch.jobs.engine_host import served_name

    if args.device != "cpu":
        raise SystemExit("--workload embeddings compares on the CPU (sentence-transformers' device is cpu)")
    model = args.model or smollm2_dir()
    pooling = read_pooling(Path(model), load_hf_config(Path(model)))
    if pooling.unsupported:
        raise SystemExit(f"{model}: {pooling.unsupported}")
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = embedding_texts(tokenizer, args.num_prompts, args.seed)
    counts = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    flops, params = embedding_flops(model, counts)
    skip = set(filter(None, args.skip.split(",")))
    configs = [c for c in (Config("default", "auto", None), Config("same", args.dtype, args.dtype))
               if c.name not in skip]
    print(f"workload embeddings: {Path(model).name}, {len(texts)} inputs of {min(counts)}-{max(counts)} tokens "
          f"({sum(counts)} tokens, mean {sum(counts) / len(counts):.1f}), {INPUTS_PER_LINE} inputs per "
          f"/v1/embeddings line, pooling {pooling.method}{', normalized' if pooling.normalize else ''}; "
          f"threads={args.threads}, CPU flags: {cpu_flags()}")
    verdicts = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        input_path = work / "embeddings.jsonl"
        lines = write_embedding_lines(input_path, served_name(model, None), texts, INPUTS_PER_LINE)
        for cfg in configs:
            best, st_dtype = run_config(cfg, model, texts, input_path, lines, pooling.method, pooling.normalize,
                              args.kernels.split(",")[0], args.rounds, work)
            verdicts[cfg.name] = report_config(cfg, best, st_dtype, args.rounds, sum(counts), flops, params, model,
                                               peak_fn)
    print("\n" + ", ".join(f"{name}: {'held' if ok else 'NOT held'}" for name, ok in verdicts.items()))
