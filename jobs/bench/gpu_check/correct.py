"""Correctness sections of scripts/gpu_check.py: parity with transformers, CUDA graphs vs eager,
the torch kernel backend, and the kernel tests (run by the driver as pytest subprocesses)."""
from __future__ import annotations

import re
import time
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import (
    PARITY_EXTRA, ROOT, Recorder, Section, Skip, free_memory, graphs_active, greedy, kernel_backend, log, make_llm,
    random_prompts, sync,
)

# A greedy divergence is tolerated only where transformers' own top-2 logits are closer than this.
NEAR_TIE = {"float32": 1e-4, "bfloat16": 0.25}


def parity_prompts(p: dict, vocab: int, seed: int = 0) -> list[list[int]]:
    prompts = random_prompts(len(p["parity_lengths"]), list(p["parity_lengths"]), vocab, seed)
    prefix = random_prompts(1, [p["parity_prefix"]], vocab, seed + 1)[0]
    prompts += [prefix + tail for tail in random_prompts(2, [5, 40], vocab, seed + 2)]
    prompts.append(list(prompts[-1]))  # a whole prompt repeated: a full prefix-cache hit
    return prompts


def transformers_greedy(path, prompts, max_new: int, dtype: str, device: str) -> list[tuple[list[int], object]]:
    """(tokens, logits [steps, vocab] float32) per prompt, one prompt at a time (no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device).eval()
    refs = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(torch.tensor([prompt], device=device), max_new_tokens=max_new, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=model.config.pad_token_id)
            refs.append((out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits).float().cpu()))
    del model
    free_memory()
    return refs


def compare(got: list[list[int]], want: list[list[int]], gaps, tol: float) -> dict:
    """First divergence per sequence; tolerated where gaps(i, step) < tol. gaps(i, step) -> top-2 gap of the reference."""
    out = {"sequences": len(want), "tokens_compared": 0, "near_ties": [], "failures": []}
    for i, (g, w) in enumerate(zip(got, want)):
        for step, (a, b) in enumerate(zip(g, w)):
            out["tokens_compared"] += 1
            if a != b:
                gap = gaps(i, step)
                note = f"seq {i} step {step}: got {a}, reference {b} (reference top-2 gap {gap:.2e})"
                (out["near_ties"] if gap < tol else out["failures"]).append(note)
                break
        else:
            if len(g) != len(w):
                out["failures"].append(f"seq {i}: {len(g)} tokens, reference {len(w)}")
    return out


def _logit_gap(refs):
    def gap(i, step):
        top2 = refs[i][1][step].topk(2).values
        return float(top2[0] - top2[1])

    return gap


class Correctness:
    def __init__(self, recorder: Recorder, p: dict, device: str, workdir: Path) -> None:
        self.recorder, self.p, self.device, self.workdir = recorder, p, device, workdir
        self.checkpoints: dict[str, Path] = {}
        self.refs: dict[tuple[str, str], list] = {}
        self.engine_tokens: dict[tuple[str, str], list] = {}

    def checkpoint(self, arch: str) -> Path:
        from pagebatch.engine.make_model import make_checkpoint

        if arch not in self.checkpoints:
            self.checkpoints[arch] = make_checkpoint(self.workdir / f"parity-{arch}", arch,
                                                     **(self.p["parity_shape"] | PARITY_EXTRA.get(arch, {})))
        return self.checkpoints[arch]

    def engine_options(self, dtype: str, **extra) -> dict:
        # max_num_seqs=32: a short CUDA-graph ladder (1..32) per engine, all these runs need
        return dict(dtype=dtype, device=self.device, block_size=16, max_num_batched_tokens=256, max_num_seqs=32,
                    kv_cache_memory=128 << 20, max_model_len=2048, **extra)

    def one(self, sec: Section, arch: str, dtype: str, kernels: str | None = None) -> dict:
        path = self.checkpoint(arch)
        prompts = parity_prompts(self.p, 500)
        new = self.p["parity_new"]
        if (arch, dtype) not in self.refs:
            self.refs[arch, dtype] = transformers_greedy(path, prompts, new, dtype, self.device)
        refs = self.refs[arch, dtype]
        llm = make_llm(path, kernels=kernels, **self.engine_options(dtype))
        backend, graphs = kernel_backend(llm), graphs_active(llm)
        serving = llm.engine.serving_path().as_dict() if hasattr(llm.engine, "serving_path") else {}
        sync(self.device)
        t = time.perf_counter()
        outs = llm.generate(prompts, greedy(new))
        sync(self.device)
        seconds = time.perf_counter() - t
        del llm
        free_memory()
        errors = [f"seq {i}: {o.error}" for i, o in enumerate(outs) if o.error]
        tokens = [o.token_ids for o in outs]
        if kernels is None:
            self.engine_tokens[arch, dtype] = tokens
        result = compare(tokens, [r[0] for r in refs], _logit_gap(refs), NEAR_TIE[dtype])
        result["failures"] = errors + result["failures"]
        result.update(backend=backend, cuda_graphs=graphs, generate_s=round(seconds, 3),
                      kernel_fallbacks=serving.get("fallbacks", []), cuda_graphs_state=serving.get("cuda_graphs"))
        # the start-up self-check replaced a kernel, or a captured graph's replay disagreed with the eager step
        result["failures"] += [f"kernel {op} failed its self-check: the torch reference serves it"
                               for op in serving.get("fallbacks", [])]
        if serving.get("cuda_graphs") == "eager-fallback":
            result["failures"].append(f"CUDA graphs fell back to eager: {serving.get('cuda_graphs_detail')}")
        self.last_tokens = tokens
        label = f"{arch}/{dtype}" + (f"/kernels={kernels}" if kernels else "")
        log(f"  {label}: {result['tokens_compared']} tokens compared, {len(result['near_ties'])} near-ties, "
            f"{len(result['failures'])} failures, backend={backend}, graphs={graphs}")
        for failure in result["failures"]:
            sec.error(f"{label} {failure}")
        return result

    def parity(self, sec: Section) -> None:
        """Engine greedy tokens vs transformers' generate on the same device and dtype."""
        results, tokens, ties = {}, 0, 0
        for dtype, archs in self.p["parity_runs"].items():
            for arch in archs:
                if sec.remaining() < 5:
                    sec.error(f"{arch}/{dtype}: not run, section budget spent")
                    continue
                r = results[f"{arch}/{dtype}"] = self.one(sec, arch, dtype)
                tokens += r["tokens_compared"]
                ties += len(r["near_ties"])
                sec.detail("runs", results)
        sec.figure("runs", len(results))
        sec.figure("tokens_compared", tokens)
        sec.figure("near_ties_tolerated", ties)
        sec.figure("failures", len(sec.errors))
        sec.figure("kernel_fallbacks", sum(len(r.get("kernel_fallbacks", [])) for r in results.values()))
        sec.detail("tolerance", {k: f"divergence allowed only where transformers' top-2 logit gap < {v}" for k, v in NEAR_TIE.items()})

    def cuda_graphs(self, sec: Section) -> None:
        """Decode with CUDA graphs captured and replayed gives the eager decode's tokens."""
        if not self.device.startswith("cuda"):
            raise Skip("CUDA graph capture needs a CUDA device")
        path = self.checkpoint("qwen3")
        lo, hi = self.p["graph_new"]
        prompts = random_prompts(self.p["graph_prompts"], (1, 300), 500, seed=7)
        import random as _random

        rng = _random.Random(3)
        params = [greedy(rng.randint(lo, hi), ignore_eos=True, logprobs=2) for _ in prompts]
        runs = {}
        for dtype in ("float32", "bfloat16"):
            outs = {}
            for graphs in (False, True):
                llm = make_llm(path, **self.engine_options(dtype, enable_cuda_graphs=graphs))
                active = graphs_active(llm)
                if graphs and active is False:
                    sec.error(f"{dtype}: enable_cuda_graphs=True but no graphs were captured (fell back to eager)")
                llm.generate(prompts[:2], greedy(2))
                sync(self.device)
                t = time.perf_counter()
                outs[graphs] = llm.generate(prompts, params)
                sync(self.device)
                runs[f"{dtype}/{'graphs' if graphs else 'eager'}"] = dict(graphs_active=active, generate_s=round(time.perf_counter() - t, 3))
                del llm
                free_memory()
            eager = outs[False]

            def gap(i, step, eager=eager):
                top = eager[i].logprobs[step].top
                return float(top[0].logprob - top[1].logprob) if len(top) > 1 else float("inf")

            r = compare([o.token_ids for o in outs[True]], [o.token_ids for o in eager], gap, NEAR_TIE[dtype])
            runs[dtype] = r
            for failure in r["failures"]:
                sec.error(f"{dtype} graphs vs eager {failure}")
            sec.figure(f"{dtype}_tokens_compared", r["tokens_compared"])
            sec.figure(f"{dtype}_near_ties", len(r["near_ties"]))
            sec.figure(f"{dtype}_mismatches", len(r["failures"]))
            sec.detail("runs", runs)

    def torch_backend(self, sec: Section) -> None:
        """The engine with the pure-torch kernels on this device: vs transformers and vs the default backend."""
        results = {}
        for dtype, archs in self.p["torch_runs"].items():
            for arch in archs:
                r = self.one(sec, arch, dtype, kernels="torch")
                default = self.engine_tokens.get((arch, dtype))
                if default is not None:  # informative: the pass/fail criterion is parity with transformers
                    r["tokens_equal_default_backend"] = self.last_tokens == default
                results[f"{arch}/{dtype}"] = r
                if r["backend"] not in (None, "torch"):
                    sec.error(f"{arch}/{dtype}: asked for kernels=torch, the engine runs {r['backend']}")
                sec.detail("runs", results)
        sec.figure("runs", len(results))
        sec.figure("failures", len(sec.errors))


def run_correctness(recorder: Recorder, p: dict, device: str, workdir: Path, deadline: float) -> None:
    c = Correctness(recorder, p, device, workdir)

    def left(share: float) -> float:
        return max(0.0, (deadline - time.time()) * share)

    # without CUDA the graph section is skipped at once: parity may take more of the child's time
    recorder.run("parity", left(0.75 if device.startswith("cuda") else 0.85), c.parity)
    recorder.run("cuda_graphs", left(0.5), c.cuda_graphs)
    recorder.run("torch_backend", left(0.95), c.torch_backend)


# -- the kernel tests ----------------------------------------------------------------------------------------

SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_base(interpret: bool) -> tuple[list[str], dict]:
    """pytest argv (without test ids) and env: the tests/kernels conftest only (the service fixtures of
    tests/conftest.py need packages a GPU image lacks), compiled kernels unless ``interpret``."""
    import os
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0", PYTHONUNBUFFERED="1")
    if interpret:
        env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    env.pop("PAGEBATCH_KERNELS", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--confcutdir", str(ROOT / "tests" / "kernels")]
    return argv, env


def collect(interpret: bool, targets: list[str], timeout: float) -> list[str]:
    import subprocess

    argv, env = pytest_base(interpret)
    done = subprocess.run(argv + ["--collect-only", *targets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    ids = [line.strip() for line in done.stdout.splitlines() if "::" in line and not line.startswith(("=", " "))]
    if not ids:
        raise RuntimeError(f"pytest collected no tests (rc {done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    return ids


def shard(ids: list[str], n: int) -> list[list[str]]:
    """Round-robin over test files' tests so each shard gets a mix (the heavy files spread out)."""
    n = max(1, min(n, len(ids)))
    return [ids[i::n] for i in range(n)]


def parse_summary(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    for count, word in SUMMARY.findall(lines[-1] if lines else ""):
        word = "errors" if word.startswith("error") else word
        counts[word] = counts.get(word, 0) + int(count)
    return counts


def failed_ids(text: str) -> list[str]:
    return [line.split(" ", 1)[1][:300] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
