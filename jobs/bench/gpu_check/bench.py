"""Measurement sections of scripts/gpu_check.py: the random checkpoints, throughput against transformers,
batch-1 decode against bandwidth and prefill against matmul peak.

Reuses jobs/bench/engine.py (workload, _hf_model, run_static, run_continuous) by import.
"""
from __future__ import annotations

import functools
import inspect
import json
import shutil
import time
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import (
    Recorder,
    Section,
    checkpoint_stats,
    free_memory,
    graphs_active,
    greedy,
    kernel_backend,
    log,
    make_llm,
    random_prompts,
    sync,
)


def model_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


# -- checkpoints --------------------------------------------------------------------------------------------

def grow_layers(path: Path, num_layers: int, device: str, seed: int = 0) -> None:
    """Turn a 1-layer checkpoint into a ``num_layers`` one: new layers' matrices random at layer 0's std
    (drawn on ``device``: seconds for 8B parameters on a GPU), their norms copied. One model.safetensors."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(path.glob("*.safetensors"))
    tensors = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    prefix = "model.layers.0."
    layer0 = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(1, num_layers):
        for name, v in layer0.items():
            if v.dim() >= 2:
                t = torch.randn(v.shape, generator=gen, device=device, dtype=v.dtype).mul_(float(v.float().std()))
                tensors[f"model.layers.{i}.{name}"] = t.cpu()
            else:
                tensors[f"model.layers.{i}.{name}"] = v.clone()
    for file in files:
        file.unlink()
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_hidden_layers"] = num_layers
    if isinstance(cfg.get("layer_types"), list) and cfg["layer_types"]:
        cfg["layer_types"] = (cfg["layer_types"] * num_layers)[:num_layers]
    cfg_file.write_text(json.dumps(cfg, indent=2))


def make_model(dest: Path, arch: str, shape: dict, dtype: str, device: str, grow: bool) -> dict:
    from pagebatch.engine.make_model import make_checkpoint

    want = dict(arch=arch, shape=shape, dtype=dtype, grow=grow)
    ready = dest / "READY.json"
    if ready.exists() and json.loads(ready.read_text()).get("spec") == want:
        return json.loads(ready.read_text()) | {"reused": True}
    shutil.rmtree(dest, ignore_errors=True)  # no stale weight files of another shape
    t = time.perf_counter()
    opts = dict(shape, dtype=dtype, init_std=0.02, max_position_embeddings=4096)
    if grow and shape["num_layers"] > 1:
        make_checkpoint(dest, arch, **(opts | {"num_layers": 1}))
        grow_layers(dest, shape["num_layers"], device if device.startswith("cuda") else "cpu")
    else:
        make_checkpoint(dest, arch, **opts)
    info = dict(spec=want, stats=checkpoint_stats(dest), make_s=round(time.perf_counter() - t, 2))
    ready.write_text(json.dumps(info))
    return info


def run_models(recorder: Recorder, p: dict, device: str, workdir: Path, deadline: float) -> None:
    def body(sec: Section) -> None:
        for which in ("small", "large"):
            arch, shape = p[which]
            info = make_model(workdir / f"model-{which}", arch, shape, model_dtype(device), device, grow=which == "large" and p["grow_large"])
            sec.figure(f"{which}_params", info["stats"]["params"])
            sec.figure(f"{which}_weight_bytes", info["stats"]["weight_bytes"])
            sec.figure(f"{which}_make_s", info["make_s"])
            sec.detail(which, dict(arch=arch, shape=shape, dtype=model_dtype(device), reused=info.get("reused", False)))
            free_memory()

    recorder.run("models", deadline - time.time(), body)


# -- throughput ------------------------------------------------------------------------------------------------

def workloads(p: dict, n: int, vocab: int) -> dict[str, tuple[list[list[int]], list[int]]]:
    """bench_engine's mixed workload (32-384 prompt tokens, 16-160 output tokens), and the same output lengths
    behind one shared prefix (a system prompt) with short distinct suffixes."""
    from pagebatch.jobs.bench.engine import workload

    prompts, outputs = workload(n, vocab, seed=0)
    if p["prompt_len"]:
        prompts = [x[: p["prompt_len"]] for x in prompts]
        outputs = [min(o, p["out_len"]) for o in outputs]
    prefix = random_prompts(1, [p["prefix_len"]], vocab, seed=11)[0]
    shared = [prefix + s for s in random_prompts(n, p["suffix"], vocab, seed=12)]
    return {"mixed": (prompts, outputs), "prefix": (shared, outputs)}


def cpu_friendly_continuous_batching(model) -> None:
    """On CPU (the dry run) transformers' manager spends ~20 s in its warm-up (graph pre-capture, for GPUs) and
    seconds sizing its cache to free RAM: leave the warm-up out and give it a small cache. GPUs keep the defaults."""
    manager = type(model).continuous_batching_context_manager
    params = inspect.signature(manager).parameters
    extra = {"warmup": False} if "warmup" in params else {}
    try:
        from transformers import ContinuousBatchingConfig

        if "continuous_batching_config" in params:
            extra["continuous_batching_config"] = ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=256, page_size=16)
    except (ImportError, TypeError):
        pass
    model.continuous_batching_context_manager = functools.partial(manager, model, **extra)


class Throughput:
    def __init__(self, recorder: Recorder, p: dict, device: str, workdir: Path, which: str) -> None:
        self.recorder, self.p, self.device, self.which = recorder, p, device, which
        self.path = workdir / f"model-{which}"
        self.dtype = model_dtype(device)
        self.cuda = device.startswith("cuda")

    def system(self, sec: Section, name: str, min_s: float, fn) -> dict | None:
        systems = sec.rec["details"].setdefault("systems", {})
        if sec.remaining() < min_s:
            systems[name] = {"status": "skipped", "reason": f"section budget: {sec.remaining():.0f} s left, ~{min_s:.0f} s needed"}
            log(f"  {name}: skipped ({systems[name]['reason']})")
            sec.save()
            return None
        t = time.monotonic()
        try:
            r = fn()
            r["status"] = "pass"
        except Exception as exc:  # noqa: BLE001 - one system's failure is recorded, the others still run
            r = {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:1500]}
            sec.error(f"{name}: {r['error']}")
        r["wall_s"] = round(time.monotonic() - t, 2)
        free_memory()
        if self.cuda:
            import torch

            r["gpu_gib_allocated_after"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        systems[name] = r
        for key in ("tok_s", "seconds"):
            if key in r:
                sec.figure(f"{name}_{key}", r[key])
        if "tok_s" in r:
            log(f"  {name}: {r['tok_s']:.1f} output tok/s ({r['output_tokens']} tokens in {r['seconds']:.2f} s"
                + (", partial" if r.get("partial") else "") + ")")
        return r

    # pagebatch ---------------------------------------------------------------------------------------------
    def build(self, graphs: bool, kernels: str | None = None):
        t = time.perf_counter()
        llm = make_llm(self.path, kernels=kernels, dtype=self.dtype, device=self.device, max_num_seqs=256,
                       max_num_batched_tokens=2048, kv_cache_memory=self.p[f"kv_{self.which}"],
                       max_model_len=self.p["max_model_len"], enable_cuda_graphs=graphs)
        llm.generate(random_prompts(4, (16, 64), 500, seed=99), greedy(4, ignore_eos=True))  # warm-up
        sync(self.device)
        return llm, dict(setup_s=round(time.perf_counter() - t, 2), cuda_graphs=graphs_active(llm), backend=kernel_backend(llm))

    def generate(self, llm, prompts, outputs) -> dict:
        params = [greedy(n, ignore_eos=True) for n in outputs]
        sync(self.device)
        t = time.perf_counter()
        outs = llm.generate(prompts, params)
        sync(self.device)
        seconds = time.perf_counter() - t
        bad = [o.error for o in outs if o.error] + [f"{len(o.token_ids)} != {n}" for o, n in zip(outs, outputs) if len(o.token_ids) != n]
        if bad:
            raise RuntimeError(f"{len(bad)} requests came back wrong: {bad[:3]}")
        return dict(seconds=round(seconds, 4), requests=len(prompts), output_tokens=sum(outputs), prompt_tokens=sum(map(len, prompts)),
                    tok_s=sum(outputs) / seconds, cached_prompt_tokens=sum(o.num_cached_tokens for o in outs))

    def pagebatch(self, sec: Section, name: str, graphs: bool, kernels: str | None, loads: dict, then=None) -> None:
        box = {}

        def first():
            box["llm"], info = self.build(graphs, kernels)
            return self.generate(box["llm"], *loads["mixed"]) | info

        self.system(sec, name, self.p[f"min_pb_{self.which}"], first)
        if "llm" in box and then is not None:
            then(box["llm"])
        box.clear()
        free_memory()

    # transformers ------------------------------------------------------------------------------------------
    def hf(self, sec: Section, loads: dict) -> None:
        import pagebatch.jobs.bench.engine as be

        dev, dt = self.device, self.dtype
        box = {}

        def load():
            t = time.perf_counter()
            box["model"] = be._hf_model(str(self.path), dev, dt)
            return dict(load_s=round(time.perf_counter() - t, 2), attn_implementation=str(box["model"].config._attn_implementation))

        self.system(sec, "hf_load", 5, load)
        if "model" not in box:
            return
        model = box.pop("model")
        original = be._hf_model
        be._hf_model = lambda *a, **k: model  # bench_engine's runners, on the one loaded model
        if not self.cuda:
            cpu_friendly_continuous_batching(model)
        try:
            def static(batch: int, load: str) -> dict:
                prompts, outputs = loads[load]
                seconds, done = 0.0, 0
                for i in range(0, len(prompts), batch):
                    if done and sec.remaining() < self.p[f"min_static_{self.which}"]:
                        break
                    seconds += be.run_static(str(self.path), prompts[i : i + batch], outputs[i : i + batch], dev, dt, batch=batch)
                    done = min(i + batch, len(prompts))
                return dict(seconds=round(seconds, 4), requests=done, output_tokens=sum(outputs[:done]),
                            tok_s=sum(outputs[:done]) / seconds, partial=done < len(prompts))

            def continuous(load: str) -> dict:
                prompts, outputs = loads[load]
                seconds = be.run_continuous(str(self.path), prompts, outputs, dev, dt)
                return dict(seconds=round(seconds, 4), requests=len(prompts), output_tokens=sum(outputs), tok_s=sum(outputs) / seconds)

            b_big, b_small = self.p["static_batches"]
            ms, mc = self.p[f"min_static_{self.which}"], self.p[f"min_cb_{self.which}"]
            self.system(sec, f"hf_static_b{b_big}", ms, lambda: static(b_big, "mixed"))
            self.system(sec, "hf_continuous", mc, lambda: continuous("mixed"))
            self.system(sec, f"hf_static_b{b_big}_prefix", ms, lambda: static(b_big, "prefix"))
            self.system(sec, "hf_continuous_prefix", mc, lambda: continuous("prefix"))
            self.system(sec, f"hf_static_b{b_small}", ms, lambda: static(b_small, "mixed"))
        finally:
            be._hf_model = original
            model = None  # noqa: F841 - the last reference: frees the card for what runs next
            free_memory()

    # batch-1 decode and prefill ----------------------------------------------------------------------------
    def decode(self, sec: Section, llm, stats: dict) -> None:
        """Per-step time of one sequence's decode: (time of 1+N tokens - time of 1 token) / N, fresh prompts each time."""
        steps = self.p[f"decode_steps_{self.which}"]
        rng_seed, per_step = 40, []
        for rep in range(3):
            a, b = random_prompts(2, [128, 128], stats["vocab"], seed=rng_seed + rep)
            sync(self.device)
            t = time.perf_counter()
            llm.generate([a], greedy(1 + steps, ignore_eos=True))
            sync(self.device)
            long = time.perf_counter() - t
            t = time.perf_counter()
            llm.generate([b], greedy(1, ignore_eos=True))
            sync(self.device)
            per_step.append((long - (time.perf_counter() - t)) / steps)
        step = sorted(per_step)[1]
        method = "(t(1+N tokens) - t(1 token)) / N, median of 3"
        if step <= 0:  # timer noise swamped the difference (a loaded CPU): the whole generate over N, prefill included
            step, method = long / (1 + steps), "t(1+N tokens) / (1+N), prefill included (the difference came out <= 0)"
        kv = 2 * stats["layers"] * stats["kv_heads"] * stats["head_dim"] * stats["elem_bytes"] * (128 + steps / 2)
        read = stats["decode_weight_bytes"] + kv
        sec.figure("steps", steps)
        sec.figure("step_ms", step * 1e3)
        sec.figure("bytes_per_step", read)
        sec.figure("achieved_gb_s", read / step / 1e9)
        sec.detail("method", "bytes per step = weights read by a step (embedding table excluded when untied) + live KV "
                             f"(128-token prompt + half the steps); step time = {method}")
        sec.detail("cuda_graphs", graphs_active(llm))

    def prefill(self, sec: Section, llm, stats: dict) -> None:
        num, length = self.p[f"prefill_{self.which}"]
        prompts = random_prompts(num, [length] * num, stats["vocab"], seed=60)
        sync(self.device)
        t = time.perf_counter()
        llm.generate(prompts, greedy(1, ignore_eos=True))
        sync(self.device)
        seconds = time.perf_counter() - t
        tokens = num * length
        attn = 4 * stats["layers"] * stats["heads"] * stats["head_dim"] * num * length * (length + 1) / 2
        flops = 2 * stats["layer_matmul_params"] * tokens + 2 * stats["vocab"] * stats["hidden"] * num + attn
        sec.figure("tokens", tokens)
        sec.figure("seconds", seconds)
        sec.figure("tokens_per_s", tokens / seconds)
        sec.figure("achieved_tflops", flops / seconds / 1e12)
        sec.detail("method", f"{num} fresh prompts of {length} tokens, max_tokens=1 (prefill only, chunks of the engine's "
                             "max_num_batched_tokens); FLOPs = 2 x layer matmul params x tokens + lm_head per sequence + causal attention")

    def body(self, sec: Section) -> None:
        ready = self.path / "READY.json"
        if not ready.exists():
            raise RuntimeError(f"no checkpoint at {self.path}: the models section did not make it")
        stats = checkpoint_stats(self.path)
        n = self.p[f"{self.which}_requests"]
        loads = workloads(self.p, n, stats["vocab"])
        sec.detail("model", dict(json.loads(ready.read_text())["spec"], params=stats["params"]))
        sec.detail("workload", {k: dict(requests=len(v[0]), prompt_tokens=sum(map(len, v[0])), output_tokens=sum(v[1])) for k, v in loads.items()}
                   | {"engine": "max_num_seqs=256, max_num_batched_tokens=2048, greedy, ignore_eos", "dtype": self.dtype})
        sec.figure("params", stats["params"])
        sec.figure("requests", n)
        sec.figure("output_tokens", sum(loads["mixed"][1]))

        def with_main(llm) -> None:
            self.system(sec, "pagebatch_prefix", 3, lambda: self.generate(llm, *loads["prefix"]))
            budget = min(sec.remaining() * 0.15, 60)
            self.recorder.run(f"decode_{self.which}", budget, lambda s: self.decode(s, llm, stats))
            self.recorder.run(f"prefill_{self.which}", min(sec.remaining() * 0.15, 60), lambda s: self.prefill(s, llm, stats))

        def no_graphs() -> None:
            if self.cuda:
                self.pagebatch(sec, "pagebatch_no_graphs", False, None, loads)
            else:
                sec.rec["details"]["systems"]["pagebatch_no_graphs"] = {"status": "skipped", "reason": "no CUDA graphs on CPU: the same as pagebatch"}

        # Cheapest and most telling first; what runs out of the section's budget is recorded as skipped.
        self.pagebatch(sec, "pagebatch", True, None, loads, then=with_main)
        if self.which == "small":  # reloading ~1 GB is cheap; at ~8B (16 GB) transformers comes first
            no_graphs()
        self.hf(sec, loads)
        if self.which != "small":
            no_graphs()
        if self.which == "small":
            self.pagebatch(sec, "pagebatch_torch_kernels", False, "torch", loads)
        self.speedups(sec)

    def speedups(self, sec: Section) -> None:
        f = sec.rec["figures"]
        pb, pbp = f.get("pagebatch_tok_s"), f.get("pagebatch_prefix_tok_s")
        static = [v for k, v in f.items() if k.startswith("hf_static_b") and k.endswith("_tok_s") and "prefix" not in k]
        pairs = {
            "speedup_vs_static": (pb, max(static) if static else None),
            "speedup_vs_continuous": (pb, f.get("hf_continuous_tok_s")),
            "prefix_speedup_vs_static": (pbp, f.get(f"hf_static_b{self.p['static_batches'][0]}_prefix_tok_s")),
            "prefix_speedup_vs_continuous": (pbp, f.get("hf_continuous_prefix_tok_s")),
            "cuda_graphs_speedup": (pb, f.get("pagebatch_no_graphs_tok_s")),
            # eager on both sides: the kernels alone (on CPU both are the torch references)
            "triton_vs_torch_kernels_speedup": (f.get("pagebatch_no_graphs_tok_s") or (pb if not self.cuda else None),
                                                f.get("pagebatch_torch_kernels_tok_s")),
        }
        for key, (a, b) in pairs.items():
            if a and b:
                sec.figure(key, a / b)


def run_throughput(recorder: Recorder, p: dict, device: str, workdir: Path, deadline: float, which: str) -> None:
    t = Throughput(recorder, p, device, workdir, which)
    recorder.run(f"throughput_{which}", deadline - time.time() - 2, t.body)
    for name in (f"decode_{which}", f"prefill_{which}"):
        if name not in recorder.data:
            recorder.data[name] = {"status": "fail", "error": "not run: pagebatch did not run in the throughput section",
                                   "duration_s": 0.0, "budget_s": 0.0, "figures": {}, "details": {}}
    recorder.flush()

