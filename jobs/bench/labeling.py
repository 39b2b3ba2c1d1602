"""The nightly-labeling workload (`pagebatch bench engine --workload labeling`): many short rows, one shared
~1,000-token instruction, a 5-label answer, SmolLM2-135M-Instruct, greedy.

Rows: distinct sentences of Python's documentation (labeling_data). Each row is a chat of two messages, the
guideline as the system message and the sentence as the user message, rendered through the model's chat template;
the answer is constrained to the label set. Systems, alternated round by round in one process, each's best of
--rounds (model loading untimed):

- pagebatch: a JSONL batch file of chat-completion lines with ``structured_outputs: {"choice": LABELS}``,
  ``temperature: 0``, run by `pagebatch run` in-process (run_local; its run_seconds exclude the model load, a new
  engine each round, so every round starts with an empty prefix cache). Prompt and cached tokens come from the
  results' usage.
- transformers: batched ``generate`` (left padding, batches of --hf-batch) with ``prefix_allowed_tokens_fn``
  walking the same label trie (greedy constrained by the label set, so its answers are comparable one to one). It
  recomputes the instruction for every row, so it runs on the first --hf-rows rows only; lines/s is over those.
- llama.cpp: llama-server (jobs/bench/llamacpp.py) with ``cache_prompt: true`` and the labels as a GBNF grammar of
  their token ids, --llama-slots parallel slots, the same token ids and weights dtype, on the first --llama-rows
  rows (default all); a server started for each round (untimed), so its prompt cache starts empty as pagebatch's does.

Reported: lines/s and ratios, prompt tokens computed and served from cache, the share of the instruction's tokens
served from cache over the whole run, label agreement between systems on the rows both ran, and the work of the
tokens pagebatch actually computed as a share of the measured matmul peak.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pagebatch.jobs.bench.labeling_data import GUIDELINE, LABELS, doc_sentences
from pagebatch.jobs.bench.workloads import Workload, smollm2_dir

MODEL_NAME = "smollm2"


@dataclass
class LabelingWorkload:
    model: str  # checkpoint directory
    rows: list[str]
    prompts: list[list[int]]  # each row's chat rendered through the model's template
    label_ids: list[list[int]]  # each label's token ids
    eos: int  # the end token a label closes with when it is a prefix of another (as the engine's ChoiceState)

    @property
    def instruction_tokens(self) -> int:
        """Tokens every prompt shares: the guideline and the chat template around it."""
        first = self.prompts[0]
        shared = len(first)
        for p in self.prompts[1:]:
            n = 0
            while n < min(shared, len(p)) and p[n] == first[n]:
                n += 1
            shared = n
        return shared


def messages(row: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": GUIDELINE}, {"role": "user", "content": row}]


def labeling_workload(model: str, num_rows: int, seed: int) -> LabelingWorkload:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = doc_sentences(num_rows, seed)
    prompts = []
    for row in rows:
        encoded = tokenizer.apply_chat_template(messages(row), add_generation_prompt=True, tokenize=True)
        prompts.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in LABELS]
    eos = GenerationConfig.from_pretrained(model).eos_token_id
    eos = min(eos) if isinstance(eos, list) else eos
    return LabelingWorkload(model, rows, prompts, label_ids, eos)


@dataclass
class LabelRun:
    seconds: float
    labels: list[str]  # one per row run (the first len(labels) rows)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    instruction_cached: int | None = None  # of the cached tokens, those inside the shared instruction
    computed_positions: list[tuple[int, int]] | None = None  # per row: (first computed position, end)

    @property
    def lines_per_s(self) -> float:
        return len(self.labels) / self.seconds


# -- pagebatch: a batch file through `pagebatch run` --------------------------------------------------------------
def write_batch_file(path: Path, w: LabelingWorkload) -> None:
    with path.open("w") as f:
        for i, row in enumerate(w.rows):
            body = {"model": MODEL_NAME, "messages": messages(row), "temperature": 0,
                    "structured_outputs": {"choice": LABELS}}
            f.write(json.dumps({"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")


def pagebatch_labeling_run(w: LabelingWorkload, batch_file: Path, workdir: Path, dtype: str, n: int) -> LabelRun:
    """One `pagebatch run` of the batch file (in-process; its own timing excludes loading the model)."""
    from pagebatch.jobs.commands.local_run import run_local
    from pagebatch.jobs.engine_host import EngineOptions
    from pagebatch.jobs.settings import Settings

    out = workdir / f"pagebatch-{n}"
    report = run_local(Settings(), batch_file, w.model, out, name=MODEL_NAME,
                       options=EngineOptions(dtype=dtype, device="cpu"), show_progress=False)
    if report.batch.request_counts.completed != len(w.rows):
        raise SystemExit(f"pagebatch run completed {report.batch.request_counts.completed}/{len(w.rows)} lines; "
                         f"see {out}")
    labels, spans = {}, {}
    prompt = cached = instruction_cached = 0
    shared = w.instruction_tokens
    for line in (out / "output.jsonl").read_text().splitlines():
        result = json.loads(line)
        i = int(result["custom_id"].removeprefix("row-"))
        body = result["response"]["body"]
        usage = body["usage"]
        hit = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        labels[i] = body["choices"][0]["message"]["content"]
        prompt += usage["prompt_tokens"]
        cached += hit
        instruction_cached += min(hit, shared)
        # positions run through the model: the uncached prompt (decode passes, if any, are not counted: a label
        # its first token settles takes none)
        spans[i] = (hit, usage["prompt_tokens"])
        if usage["prompt_tokens"] != len(w.prompts[i]):
            raise SystemExit(f"row {i}: pagebatch rendered {usage['prompt_tokens']} prompt tokens, the tokenizer's "
                             f"chat template {len(w.prompts[i])}: the systems would not see the same prompt")
    order = range(len(w.rows))
    return LabelRun(report.run_seconds, [labels[i] for i in order], prompt, cached, instruction_cached,
                    [spans[i] for i in order])


# -- transformers: batched generate constrained by the label trie -------------------------------------------------
class LabelTrie:
    """Allowed next tokens of a greedy answer constrained to the labels (the engine's ChoiceState rule)."""

    def __init__(self, label_ids: list[list[int]], eos: int) -> None:
        self.eos = eos
        self.children: dict[tuple[int, ...], set[int]] = {}
        self.terminal: set[tuple[int, ...]] = set()
        for ids in label_ids:
            for k in range(len(ids)):
                self.children.setdefault(tuple(ids[:k]), set()).add(ids[k])
            self.terminal.add(tuple(ids))

    def allowed(self, generated: tuple[int, ...]) -> list[int]:
        if generated and generated[-1] == self.eos:
            return [self.eos]  # finished: generate pads it
        nxt = sorted(self.children.get(generated, ()))
        if generated in self.terminal:
            nxt.append(self.eos)
        return nxt or [self.eos]


def transformers_labeling_run(model, tokenizer, w: LabelingWorkload, rows: int, batch: int) -> LabelRun:
    trie = LabelTrie(w.label_ids, w.eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else w.eos
    depth = max(map(len, w.label_ids)) + 1

    def go(ps: list[list[int]]) -> list[str]:
        width = max(map(len, ps))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=depth, do_sample=False,
                             eos_token_id=w.eos, pad_token_id=pad,
                             prefix_allowed_tokens_fn=lambda b, seq: trie.allowed(tuple(seq[width:].tolist())))
        answers = []
        for row in out[:, width:].tolist():
            row = row[: row.index(w.eos)] if w.eos in row else row
            answers.append(tokenizer.decode(row))
        return answers

    with torch.inference_mode():
        go(w.prompts[:2])  # warm-up
        t = time.perf_counter()
        labels: list[str] = []
        for i in range(0, rows, batch):
            labels += go(w.prompts[i : min(i + batch, rows)])
        seconds = time.perf_counter() - t
    return LabelRun(seconds, labels)


# -- llama.cpp: llama-server, prompt cache on, the labels as a grammar --------------------------------------------
def gbnf(label_ids: list[list[int]]) -> str:
    """The labels as a GBNF grammar over token ids (``<[id]>``): the same tokenizations the engine's label trie
    allows. A grammar over the labels' characters lets llama.cpp spell a label with other tokens (greedy then takes
    e.g. "error" + "s" or "f" + "unctio"), a different constraint whose answers cannot agree one to one."""
    return "root ::= " + " | ".join(" ".join(f"<[{t}]>" for t in ids) for ids in label_ids)


def llama_labeling_run(start_server, tokenizer) -> LabelRun:
    """One round on a llama-server started for it (untimed): its slots' prompt cache starts empty, as pagebatch's
    engine does in every round; a server kept across rounds would serve later rounds from the first one's cache."""
    server = start_server()
    try:
        run = server.run()
    finally:
        server.close()
    return LabelRun(run.seconds, [tokenizer.decode([t for t in row if t != server.eos]).strip() for row in run.token_ids])


# -- the report -----------------------------------------------------------------------------------------------------
def computed_flops(model: str, spans: list[tuple[int, int]]) -> float:
    """Work of the positions a run computed (per row: positions start..end-1): 2 x the non-embedding parameters per
    position and attention, 4 x layers x heads x head_dim x the position's context (lm_head_flops adds the head)."""
    from pagebatch.engine.models import ModelSpec, load_hf_config
    from pagebatch.jobs.bench.workloads import checkpoint_params

    spec = ModelSpec.from_hf_config(load_hf_config(Path(model)))
    embedding = spec.vocab_size * spec.hidden_size
    body = checkpoint_params(model) - embedding * (1 if spec.tie_word_embeddings else 2)
    positions = sum(end - start for start, end in spans)
    attention = 4 * spec.num_layers * spec.num_heads * spec.head_dim * sum(
        (end * (end + 1) - start * (start + 1)) // 2 for start, end in spans)
    return float(2 * body * positions + attention)


def lm_head_flops(model: str, sampled_tokens: int) -> float:
    from pagebatch.engine.models import ModelSpec, load_hf_config

    spec = ModelSpec.from_hf_config(load_hf_config(Path(model)))
    return float(2 * spec.vocab_size * spec.hidden_size * sampled_tokens)


def agreement(a: list[str], b: list[str]) -> tuple[int, int]:
    n = min(len(a), len(b))
    return sum(x == y for x, y in zip(a[:n], b[:n])), n


def report(w: LabelingWorkload, best: dict[str, LabelRun], rounds: int, dtype: str, matmul_peak_flops) -> None:
    """``matmul_peak_flops``: jobs/bench/engine.py's (passed in: engine.py dispatches here)."""
    names = list(best)
    base_name, base = names[0], best[names[0]]
    print(f"\nlabeling: {len(w.rows)} rows, instruction {w.instruction_tokens} shared tokens, labels {LABELS}, "
          f"greedy, dtype={dtype}, best of {rounds} round(s), systems alternated")
    for name, r in best.items():
        note = f" (first {len(r.labels)} rows only)" if len(r.labels) < len(w.rows) else ""
        print(f"{name:55s} {r.lines_per_s:9.1f} lines/s ({len(r.labels)} lines in {r.seconds:.2f} s){note}")
    for name, r in list(best.items())[1:]:
        print(f"{base_name} / {name:45s} {base.lines_per_s / r.lines_per_s:7.2f}x lines/s")
    computed = base.prompt_tokens - base.cached_tokens
    print(f"pagebatch prompt tokens: {base.prompt_tokens} in all, {computed} computed, {base.cached_tokens} served "
          f"from the prefix cache ({100 * base.cached_tokens / base.prompt_tokens:.1f}%)")
    share = base.instruction_cached / (w.instruction_tokens * len(w.rows))
    print(f"instruction tokens served from the prefix cache over the run: {base.instruction_cached} of "
          f"{w.instruction_tokens} x {len(w.rows)} = {100 * share:.2f}% (target >= 95%: "
          f"{'held' if share >= 0.95 else 'NOT held'})")
    for name in names[1:]:
        same, n = agreement(base.labels, best[name].labels)
        print(f"label agreement, {base_name} vs {name}: {same}/{n} rows ({100 * same / max(n, 1):.1f}%)")
    counts = {label: base.labels.count(label) for label in LABELS}
    outside = len(base.labels) - sum(counts.values())
    print(f"pagebatch's labels: {counts}" + (f", {outside} outside the label set" if outside else ""))
    flops = computed_flops(w.model, base.computed_positions) + lm_head_flops(w.model, len(w.rows))
    torch_dtype = getattr(torch, dtype)
    peaks = {f"{m}x{k}x{n}": matmul_peak_flops("cpu", torch_dtype, n=n, m=m, k=k, seconds=0.5)
             for m, k, n in ((1024, 1024, 1024), (512, 576, 1536), (512, 1536, 576), (512, 576, 576))}
    top = max(peaks, key=peaks.get)
    achieved = flops / base.seconds
    print(f"{dtype} matmul peak (M x K x N, best of 0.5 s each): "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()) + " GFLOP/s")
    print(f"pagebatch work of the prompt tokens it computed (2 x non-embedding params + attention, LM head once "
          f"per row): {flops / 1e9:.1f} GFLOP, {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / peaks[top]:.1f}% of the best peak ({top})")
    targets = []
    for name, ratio in (("llama.cpp", 3.0), ("transformers", 10.0)):
        for other in names[1:]:
            if other.startswith(name):
                got = base.lines_per_s / best[other].lines_per_s
                targets.append(f"pagebatch >= {ratio:g}x {name}: {got:.2f}x {'held' if got >= ratio else 'NOT held'}")
    if targets:
        print("; ".join(targets))


def resolve_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    from pagebatch.engine.dtypes import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def run(args: argparse.Namespace, matmul_peak_flops) -> None:
    """`pagebatch bench engine --workload labeling`: args from jobs/bench/engine.py's parser, and its matmul peak."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagebatch.jobs.bench.llamacpp import LlamaServer

    dtype = resolve_dtype(args.dtype)
    model_dir = args.model or smollm2_dir()
    w = labeling_workload(model_dir, args.num_prompts, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    skip = set(filter(None, args.skip.split(",")))
    hf_rows = min(args.hf_rows, len(w.rows))
    print(f"workload labeling: {Path(model_dir).name}, {len(w.rows)} rows ({sum(map(len, w.prompts))} prompt tokens, "
          f"{w.instruction_tokens} of each shared), labels {LABELS} ({[len(t) for t in w.label_ids]} tokens), "
          f"dtype={dtype}, threads={args.threads}")
    tmp = tempfile.TemporaryDirectory()
    workdir = Path(tmp.name)
    batch_file = workdir / "labeling.jsonl"
    write_batch_file(batch_file, w)

    systems = {"pagebatch run": lambda n: pagebatch_labeling_run(w, batch_file, workdir, dtype, n)}
    if "static" not in skip:
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        systems[f"transformers generate (batch {args.hf_batch}, label trie)"] = (
            lambda n: transformers_labeling_run(hf, tokenizer, w, hf_rows, args.hf_batch))
    if args.llama_cpp:
        llama_rows = min(args.llama_rows or len(w.rows), len(w.rows))
        bench_w = Workload("labeling", model_dir, w.prompts[:llama_rows], [max(map(len, w.label_ids)) + 1] * llama_rows,
                           False)

        def start_llama() -> LlamaServer:
            return LlamaServer(args.llama_cpp, bench_w, dtype, args.threads, args.llama_kv, slots=args.llama_slots,
                               request_options={"cache_prompt": True, "grammar": gbnf(w.label_ids)})

        systems[f"llama.cpp llama-server ({args.llama_slots} slots, prompt cache, GBNF)"] = (
            lambda n: llama_labeling_run(start_llama, tokenizer))
    best: dict[str, LabelRun] = {}
    for n in range(args.rounds):
        for name, system in systems.items():
            result = system(n)
            print(f"round {n + 1}: {name}: {result.lines_per_s:.1f} lines/s ({result.seconds:.2f} s)", flush=True)
            if name not in best or result.seconds < best[name].seconds:
                best[name] = result
    report(w, best, args.rounds, dtype, matmul_peak_flops)
