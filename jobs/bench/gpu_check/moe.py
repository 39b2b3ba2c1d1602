"""The mixture-of-experts section of scripts/gpu_check.py: a random Qwen3-MoE-like checkpoint made on the machine,
pagebatch's throughput on it against transformers ``generate`` (static batches), and its decode step time at
batch 48 against the dense Qwen3 whose one MLP is as wide as the experts a token uses (the same active parameters),
engines alternated, best of rounds. What serves it (the fused MoE kernel, CUDA graphs) is recorded too.

Reuses jobs/bench/workloads.py (fill_engine, decode_steps) and engine.py (static_run) by import.
"""
from __future__ import annotations

import time
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import Recorder, Section, free_memory, greedy, log, make_llm, random_prompts, sync


def _serving_path(llm) -> dict:
    engine = getattr(llm, "engine", None)
    return engine.serving_path().as_dict() if hasattr(engine, "serving_path") else {}


class MoeCheck:
    def __init__(self, p: dict, device: str, workdir: Path) -> None:
        self.p, self.device, self.workdir = p, device, workdir
        self.dtype = "bfloat16" if device.startswith("cuda") else "float32"

    def checkpoints(self, sec: Section) -> dict[str, Path]:
        from pagebatch.engine.make_model import make_checkpoint

        moe = self.p["moe_shape"]
        dense = {k: v for k, v in moe.items() if k not in ("num_experts", "experts_per_token")}
        dense["intermediate_size"] = moe["intermediate_size"] * moe["experts_per_token"]
        paths = {}
        for name, arch, shape in (("moe", "qwen3_moe", moe), ("dense", "qwen3", dense)):
            t = time.perf_counter()
            paths[name] = make_checkpoint(self.workdir / f"moe-check-{name}", arch, dtype=self.dtype, init_std=0.02,
                                          max_position_embeddings=4096, **shape)
            sec.figure(f"{name}_make_s", time.perf_counter() - t)
        sec.detail("shapes", {"moe": moe, "dense": dense, "dtype": self.dtype})
        return paths

    def engine(self, path: Path, blocks_for: int):
        return make_llm(path, dtype=self.dtype, device=self.device, max_num_seqs=256, max_num_batched_tokens=2048,
                        kv_cache_memory=self.p["kv_small"], max_model_len=self.p["max_model_len"])

    def throughput(self, sec: Section, path: Path) -> None:
        from pagebatch.jobs.bench.engine import run_static, workload

        n = self.p["moe_requests"]
        prompts, outputs = workload(n, 500, seed=0)
        if self.p["prompt_len"]:
            prompts, outputs = [x[: self.p["prompt_len"]] for x in prompts], [min(o, self.p["out_len"]) for o in outputs]
        llm = self.engine(path, n)
        llm.generate(random_prompts(4, (16, 64), 500, seed=99), greedy(4, ignore_eos=True))  # warm-up, compile
        sec.detail("serving_path", _serving_path(llm))
        for op, implementation in _serving_path(llm).get("ops", {}).items():
            if implementation == "torch-fallback":
                sec.error(f"{op}: its kernel failed the start-up self-check on this device")
        sync(self.device)
        t = time.perf_counter()
        outs = llm.generate(prompts, [greedy(o, ignore_eos=True) for o in outputs])
        sync(self.device)
        seconds = time.perf_counter() - t
        bad = [o.error for o in outs if o.error]
        if bad:
            sec.error(f"{len(bad)} MoE requests failed: {bad[:2]}")
        sec.figure("pagebatch_tok_s", sum(outputs) / seconds)
        del llm
        free_memory()
        if sec.remaining() < self.p["min_static_small"]:
            sec.detail("hf_static", "skipped: section budget")
            return
        batch = self.p["static_batches"][0]
        hf_seconds, done = 0.0, 0
        for i in range(0, n, batch):
            if done and sec.remaining() < self.p["min_static_small"]:
                break
            hf_seconds += run_static(str(path), prompts[i : i + batch], outputs[i : i + batch], self.device, self.dtype,
                                     batch=batch)
            done = min(i + batch, n)
        sec.figure(f"hf_static_b{batch}_tok_s", sum(outputs[:done]) / hf_seconds)
        sec.figure("speedup_vs_static", (sum(outputs) / seconds) / (sum(outputs[:done]) / hf_seconds))
        free_memory()

    def decode_vs_dense(self, sec: Section, paths: dict[str, Path]) -> None:
        from pagebatch.jobs.bench.workloads import decode_budget, decode_steps, fill_engine, fixed_length_prompts

        batch, steps, rounds = self.p["moe_batch"], 4, self.p["moe_rounds"]
        prompts = fixed_length_prompts(random_prompts(batch, (64, 128), 500, seed=5), batch, self.p["moe_context"])
        budget = decode_budget(prompts, steps * rounds)
        engines = {}
        for name in ("moe", "dense"):
            engines[name] = self.engine(paths[name], batch).engine
            fill_engine(engines[name], prompts, budget)
            decode_steps(engines[name], self.device, 2)  # warm-up: graphs replay, caches settle
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, engine in engines.items():
                best[name] = min(best.get(name, float("inf")), decode_steps(engine, self.device, steps))
        for name, ms in best.items():
            sec.figure(f"{name}_decode_step_ms", ms)
        sec.figure("moe_over_dense_decode", best["moe"] / best["dense"])
        sec.detail("decode", f"{batch} sequences of ~{self.p['moe_context']} tokens, best of {rounds} x {steps} steps, "
                             "engines alternated")
        log(f"  moe decode {best['moe']:.2f} ms/step vs dense {best['dense']:.2f} ms/step at batch {batch}: "
            f"{best['moe'] / best['dense']:.2f}x")
        engines.clear()
        free_memory()

    def body(self, sec: Section) -> None:
        paths = self.checkpoints(sec)
        self.decode_vs_dense(sec, paths)
        self.throughput(sec, paths["moe"])


def run_moe(recorder: Recorder, p: dict, device: str, workdir: Path, deadline: float) -> None:
    check = MoeCheck(p, device, workdir)
    recorder.run("moe", deadline - time.time() - 2, check.body)
