"""Grammar engines for structured outputs, side by side on this machine: xgrammar and llguidance.

    python jobs/bench/structured.py                   # SmolLM2's tokenizer (49152) and the random model's (512)
    python jobs/bench/structured.py --tokenizer smollm2 --rounds 9 --batch 256

Needs both libraries: ``pip install xgrammar==0.2.8 llguidance==1.9.1`` (only llguidance is a project extra).

What it measures, per tokenizer, the two libraries alternated in one process, best (and median) of the rounds:

- setup: wrapping the tokenizer (once per engine);
- compile: a typical extraction JSON schema (8 typed fields, an enum, a nested array and object), json_object,
  a regex and a 5-label choice, each with a fresh compiler (no cache) and including the first mask fill, since
  a library may build its token tables lazily;
- step: ``--batch`` matchers stopped mid-generation at different places of 16 documents (inside strings, keys,
  numbers, arrays), then one decoding step's work: filling the [batch, vocab/32] bitmask (the library's batched,
  threaded call and a plain per-row loop), applying it to [batch, vocab] float32 logits (the library's CPU
  kernel and engine/structured.py's torch-only apply when present), and accepting one token per row;
- labels: today's label path (ChoiceState.allowed + sampler.apply_allowed_tokens) against a choice grammar;
- memory: the resident-set growth of a child process that wraps the tokenizer, compiles the schema and holds
  ``--batch`` matchers (one library per child, so neither sees the other's allocations).

Ratios are xgrammar / llguidance (> 1: llguidance is faster or smaller).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "category": {"type": "string", "enum": ["news", "sports", "tech", "finance", "other"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "email", "score", "active", "category", "tags", "address"],
    "additionalProperties": False,
}
REGEX = r"[A-Z]{2}-[0-9]{4}-(alpha|beta|gamma)"
LABELS = ["positive", "negative", "neutral", "mixed", "irrelevant"]
_NAMES = ["Ann Lee", "Bo Chen", "Carla Díaz", "Dmitri Ivanov", "Eve", "Farid Khan", "Gao Yu", "Hana Sato"]
_CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Pune", "Quito", "Austin"]
_TAGS = ["breaking", "ai", "markets", "football", "weather", "local", "opinion", "science"]


def documents(n: int = 16, seed: int = 0) -> list[str]:
    """Compact JSON instances of SCHEMA: where the matchers stand mid-generation."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        doc = {
            "name": rng.choice(_NAMES), "age": rng.randint(1, 99), "email": f"user{rng.randint(1, 999)}@example.com",
            "score": round(rng.uniform(-5, 100), rng.randint(0, 3)), "active": rng.random() < 0.5,
            "category": rng.choice(SCHEMA["properties"]["category"]["enum"]),
            "tags": rng.sample(_TAGS, rng.randint(0, 4)),
            "address": {"city": rng.choice(_CITIES), "zip": str(rng.randint(10000, 99999))},
        }
        out.append(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    return out


# -- the two libraries behind one small interface ---------------------------------------------------------


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, eos: list[int], threads: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=eos)
        self.batch = xgr.BatchGrammarMatcher(max_threads=threads)
        self.threads = threads

    def compiler(self):
        return self.xgr.GrammarCompiler(self.info, max_threads=self.threads, cache_enabled=False)

    def compile(self, compiler, kind: str, spec: str):
        if kind == "json_schema":
            return compiler.compile_json_schema(spec, any_whitespace=False, separators=(",", ":"))
        if kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, separators=(",", ":"))
        if kind == "regex":
            return compiler.compile_regex(spec)
        if kind == "choice":
            labels = json.loads(spec)
            return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(x) for x in labels))
        raise ValueError(kind)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def accept(self, m, token: int) -> bool:
        return m.accept_token(token)

    def rollback(self, m, n: int) -> None:
        m.rollback(n)

    def fill_one(self, m, bitmask: torch.Tensor, row: int) -> None:
        m.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, matchers, bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, eos: list[int], threads: int) -> None:
        import llguidance
        import llguidance.hf

        # not llguidance.torch: importing it compiles a kernel with torch.compile (seconds, ~150 MB of inductor)
        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor(num_threads=threads)

    def compiler(self):
        return None

    def compile(self, compiler, kind: str, spec: str):
        opts = {"whitespace_flexible": False}
        if kind == "json_schema":
            grammar = self.llg.LLMatcher.grammar_from_json_schema(spec, defaults=opts)
        elif kind == "json_object":
            grammar = self.llg.LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=opts)
        elif kind == "regex":
            grammar = self.llg.LLMatcher.grammar_from_regex(spec)
        elif kind == "choice":
            grammar = self.llg.grammar_from("choice", spec)
        else:
            raise ValueError(kind)
        template = self.llg.LLMatcher(self.tok, grammar, log_level=0)  # llguidance compiles here
        if template.is_error():
            raise ValueError(template.get_error())
        return template

    def matcher(self, compiled):
        return compiled.deep_copy()  # a request's matcher: a copy of the compiled template (engine/structured.py)

    def accept(self, m, token: int) -> bool:
        return m.consume_token(token)

    def rollback(self, m, n: int) -> None:
        m.rollback(n)

    def fill_one(self, m, bitmask: torch.Tensor, row: int) -> None:
        words = bitmask.shape[1]
        m.unsafe_compute_mask_ptr(bitmask.data_ptr() + row * words * 4, words * 4)

    def fill_batch(self, matchers, bitmask: torch.Tensor) -> None:
        self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(),
                                              bitmask.shape[1] * 4, bitmask.shape[0])

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        # llguidance's own apply is a torch.compile'd kernel; engine/structured.py has a plain torch one
        raise NotImplementedError


LIBRARIES = {"xgrammar": XGrammar, "llguidance": LLGuidance}


# -- measurement helpers ----------------------------------------------------------------------------------


def timed(fn, rounds: int) -> tuple[float, float]:
    """(best, median) seconds of ``rounds`` calls."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples), statistics.median(samples)


def alternated(fns: dict[str, object], rounds: int, setup=None) -> dict[str, tuple[float, float]]:
    """Each round calls every fn once, in turn (so a noisy neighbour hits all of them alike); with ``setup``,
    each call is ``fn(setup())`` and only fn is timed."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            arg = setup() if setup is not None else None
            t0 = time.perf_counter()
            fns[k](arg) if setup is not None else fns[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in samples.items()}


def ms(t: float) -> str:
    return f"{t * 1e3:9.3f} ms"


def load_tokenizer(which: str):
    """(tokenizer, model vocab size, eos ids) for 'smollm2' or 'random'."""
    from transformers import AutoTokenizer

    if which == "smollm2":
        from pagebatch.engine.models.gguf import convert_gguf
        from pagebatch.jobs.commands.smollm2 import fetch_smollm2

        path = convert_gguf(fetch_smollm2())
    else:
        from pagebatch.engine.make_model import make_checkpoint

        path = make_checkpoint(Path(tempfile.mkdtemp(prefix="bench-structured-")) / "llama", "llama")
    tok = AutoTokenizer.from_pretrained(path)
    config = json.loads((Path(path) / "config.json").read_text())
    eos = config["eos_token_id"]
    return tok, int(config["vocab_size"]), eos if isinstance(eos, list) else [eos]


def mid_generation(lib, compiled, token_docs: list[list[int]], batch: int):
    """``batch`` matchers, row i advanced through a prefix of document i % 16 (a different length per row);
    and, per row, the next token of its document (what the step accepts)."""
    matchers, nexts = [], []
    for i in range(batch):
        doc = token_docs[i % len(token_docs)]
        cut = (i * 7919) % (len(doc) - 1)  # anywhere from the first token to the last-but-one
        m = lib.matcher(compiled)
        for t in doc[:cut]:
            if not lib.accept(m, t):
                raise RuntimeError(f"{lib.name} refused a token of a valid document")
        matchers.append(m)
        nexts.append(doc[cut])
    return matchers, nexts


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(which: str, lib_name: str, batch: int) -> None:
    """Run in a child process: prints the RSS growth of setup, compile and ``batch`` matchers as JSON."""
    tok, vocab, eos = load_tokenizer(which)
    base = rss_bytes()
    lib = LIBRARIES[lib_name](tok, vocab, eos, 1)
    after_setup = rss_bytes()
    compiler = lib.compiler()
    compiled = lib.compile(compiler, "json_schema", json.dumps(SCHEMA))
    after_compile = rss_bytes()
    token_docs = [tok(d, add_special_tokens=False)["input_ids"] for d in documents()]
    matchers, _ = mid_generation(lib, compiled, token_docs, batch)
    after_matchers = rss_bytes()
    print(json.dumps({"setup": after_setup - base, "compile": after_compile - after_setup,
                      "matchers": after_matchers - after_compile, "n": len(matchers)}))


# -- the benchmark ----------------------------------------------------------------------------------------


def bench(which: str, rounds: int, batch: int, threads: int) -> None:
    tok, vocab, eos = load_tokenizer(which)
    print(f"\n=== tokenizer: {which} (model vocab {vocab}, eos {eos}); batch {batch}, {threads} thread(s), "
          f"torch threads {torch.get_num_threads()}, best / median of {rounds} rounds ===")
    libs = {}
    setup = {}
    for name, cls in LIBRARIES.items():
        t0 = time.perf_counter()
        libs[name] = cls(tok, vocab, eos, threads)
        setup[name] = time.perf_counter() - t0
    print("setup (wrap the tokenizer, once per engine): " + ", ".join(f"{k} {ms(v)}" for k, v in setup.items()))

    specs = {"json_schema": json.dumps(SCHEMA), "json_object": "", "regex": REGEX, "choice": json.dumps(LABELS)}
    print("\ncompile (fresh compiler, no cache, + first mask fill):")
    for kind, spec in specs.items():
        def run(lib):
            def go():
                m = lib.matcher(lib.compile(lib.compiler(), kind, spec))
                bm = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)
                lib.fill_one(m, bm, 0)
            return go
        res = alternated({k: run(lib) for k, lib in libs.items()}, rounds)
        x, l = res["xgrammar"], res["llguidance"]
        print(f"  {kind:12} xgrammar {ms(x[0])} (med {ms(x[1])})   llguidance {ms(l[0])} (med {ms(l[1])})"
              f"   ratio {x[0] / l[0]:6.2f}")

    token_docs = [tok(d, add_special_tokens=False)["input_ids"] for d in documents()]
    print(f"\nstep at {batch} sequences mid-generation (schema above; docs of "
          f"{min(map(len, token_docs))}-{max(map(len, token_docs))} tokens):")
    states = {}
    for name, lib in libs.items():
        compiled = lib.compile(lib.compiler(), "json_schema", specs["json_schema"])
        states[name] = mid_generation(lib, compiled, token_docs, batch)
    words = (vocab + 31) // 32
    masks = {name: torch.full((batch, words), -1, dtype=torch.int32) for name in libs}
    logits0 = torch.randn(batch, vocab)

    def fill_batch(name):
        return lambda: libs[name].fill_batch(states[name][0], masks[name])

    def fill_loop(name):
        def go():
            lib, bm = libs[name], masks[name]
            for i, m in enumerate(states[name][0]):
                lib.fill_one(m, bm, i)
        return go

    def accept(name):
        def go():
            lib = libs[name]
            for m, t in zip(*states[name]):
                lib.accept(m, t)
            for m in states[name][0]:
                lib.rollback(m, 1)
        return go

    res = alternated({f"{k}/{what}": f(k) for k in libs for what, f in
                      (("fill batched", fill_batch), ("fill per-row loop", fill_loop), ("accept+rollback", accept))},
                     rounds)
    for what in ("fill batched", "fill per-row loop", "accept+rollback"):
        x, l = res[f"xgrammar/{what}"], res[f"llguidance/{what}"]
        print(f"  {what:18} xgrammar {ms(x[0])} (med {ms(x[1])})   llguidance {ms(l[0])} (med {ms(l[1])})"
              f"   ratio {x[0] / l[0]:6.2f}")
    x_bits, l_bits = (np.unpackbits(masks[k].numpy().view(np.uint8), axis=1, count=vocab, bitorder="little")
                      .astype(bool) for k in ("xgrammar", "llguidance"))
    differ = (x_bits != l_bits).any(axis=1)
    subset = (l_bits & ~x_bits).sum() == 0
    print(f"  masks: {int(differ.sum())} of {batch} rows differ; llguidance's allowed set is "
          f"{'a subset of' if subset else 'NOT a subset of'} xgrammar's (llguidance keeps forced text to its canonical "
          f"tokens, e.g. only 'address' after ',\"' where xgrammar also allows 'a', 'ad', ...; xgrammar allows special "
          f"tokens such as <|endoftext|> inside strings). Allowed bits: xgrammar {x_bits.mean():.1%}, "
          f"llguidance {l_bits.mean():.1%}")
    allowed = masks["llguidance"]

    applies = {"xgrammar CPU kernel": lambda lg: libs["xgrammar"].apply(lg, allowed)}
    try:
        from pagebatch.engine.structured import apply_bitmask
    except ImportError:
        apply_bitmask = None
    if apply_bitmask is not None:
        half = torch.arange(0, batch, 2)
        half_mask = allowed[::2].contiguous()
        applies["engine.structured all rows"] = lambda lg: apply_bitmask(lg, allowed)
        applies["engine.structured half rows"] = lambda lg: apply_bitmask(lg, half_mask, half)
    res = alternated(applies, rounds, setup=logits0.clone)
    print(f"  apply to [{batch}, {vocab}] float32 logits, in place (the clone that feeds each call is not timed):")
    for k, (best, med) in res.items():
        print(f"    {k:28} {ms(best)} (med {ms(med)})")
    if apply_bitmask is not None:
        a, b = logits0.clone(), logits0.clone()
        libs["xgrammar"].apply(a, allowed)
        apply_bitmask(b, allowed)
        assert torch.equal(a, b), "engine.structured.apply_bitmask disagrees with xgrammar's kernel"

    if apply_bitmask is not None:  # the whole step as the sampler will run it: engine/structured.py on llguidance
        from pagebatch.engine.structured import GrammarCompiler, GrammarSpec, apply_masks

        compiler = GrammarCompiler(tok, vocab, eos)
        spec = GrammarSpec("json_schema", specs["json_schema"])
        states = []
        for i in range(batch):
            doc = token_docs[i % len(token_docs)]
            state = compiler.new_state(spec)
            for t in doc[: (i * 7919) % (len(doc) - 1)]:
                state.accept(t)
            states.append(state)
        half = [s if i % 2 == 0 else None for i, s in enumerate(states)]
        res = alternated({"all rows": lambda: apply_masks(logits0, states),
                          "every other row": lambda: apply_masks(logits0, half),
                          "all rows in place": lambda: apply_masks(logits0.clone(), states, inplace=True)}, rounds)
        print(f"  engine.structured.apply_masks, the sampler's whole step (batched fill + out-of-place mask): "
              f"all {batch} rows {ms(res['all rows'][0])} (med {ms(res['all rows'][1])}), every other row "
              f"{ms(res['every other row'][0])} (med {ms(res['every other row'][1])}); in place (after a copy the "
              f"sampler already made; this timing includes that copy) {ms(res['all rows in place'][0])}")

    compiled = {name: lib.compile(lib.compiler(), "json_schema", specs["json_schema"]) for name, lib in libs.items()}
    res = alternated({name: (lambda lib=lib, c=compiled[name]: [lib.matcher(c) for _ in range(batch)])
                      for name, lib in libs.items()}, rounds)
    x, l = res["xgrammar"], res["llguidance"]
    print(f"  {batch} request states from a cached compile: xgrammar {ms(x[0])}, llguidance {ms(l[0])}"
          f"   ratio {x[0] / l[0]:6.2f}")

    # the label path: today's trie + list mask against a choice grammar, 256 rows at the first token
    from pagebatch.engine.choices import ChoiceState, ChoiceTrie
    from pagebatch.engine.sampler import apply_allowed_tokens

    labels_json = [json.dumps(x) for x in LABELS]
    trie = ChoiceTrie([tok(c, add_special_tokens=False)["input_ids"] for c in labels_json])
    choice_states = [ChoiceState(trie, min(eos)) for _ in range(batch)]
    lib = libs["llguidance"]
    compiled = lib.compile(None, "json_schema", json.dumps({"enum": LABELS}))
    choice_matchers = [lib.matcher(compiled) for _ in range(batch)]
    bm = torch.full((batch, words), -1, dtype=torch.int32)

    def trie_step():
        apply_allowed_tokens(logits0, [s.allowed() for s in choice_states])

    def grammar_step():
        lib.fill_batch(choice_matchers, bm)
        masked = logits0.clone()  # apply_allowed_tokens is not in place: pay for the copy here too
        if apply_bitmask is not None:
            apply_bitmask(masked, bm)
        else:
            libs["xgrammar"].apply(masked, bm)

    res = alternated({"trie": trie_step, "grammar": grammar_step}, rounds)
    print(f"\nlabels ({len(LABELS)} JSON-quoted labels, {batch} rows, first token): today's trie mask "
          f"{ms(res['trie'][0])}, llguidance enum grammar fill+apply {ms(res['grammar'][0])}"
          f"   ratio grammar/trie {res['grammar'][0] / res['trie'][0]:.2f}")

    print(f"\nmemory (RSS growth in a child process; {batch} matchers mid-generation):")
    for name in libs:
        out = subprocess.run([sys.executable, __file__, "--memory-child", which, name, "--batch", str(batch)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        m = json.loads(out)
        print(f"  {name:10} setup {m['setup'] / 2**20:7.1f} MiB   compile {m['compile'] / 2**20:6.1f} MiB   "
              f"{m['n']} matchers {m['matchers'] / 2**20:6.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", choices=["smollm2", "random", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="grammar threads (batched fill)")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--memory-child", nargs=2, metavar=("TOKENIZER", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    if args.memory_child:
        memory_child(*args.memory_child, args.batch)
        return
    import llguidance
    from importlib.metadata import version

    print(f"xgrammar {version('xgrammar')}, llguidance {llguidance.get_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    for which in (["smollm2", "random"] if args.tokenizer == "both" else [args.tokenizer]):
        bench(which, args.rounds, args.batch, args.threads)


if __name__ == "__main__":
    main()
