"""The driver side of scripts/gpu_check.py: subprocesses with deadlines, the env and kernel-test sections,
merging what the children recorded, the targets and the summary."""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import CHILDREN, ROOT, SECTIONS, Recorder, Section

TARGETS = [  # (name, section, figure, comparison, threshold, what)
    ("throughput_vs_hf_static", "throughput_small", "speedup_vs_static", ">=", 10.0,
     "pagebatch output tok/s / best transformers generate static batch, ~0.5B bf16, mixed workload"),
    ("throughput_vs_hf_continuous", "throughput_small", "speedup_vs_continuous", ">=", 2.0,
     "pagebatch output tok/s / transformers continuous batching (paged), ~0.5B bf16, mixed workload"),
    ("decode_batch1_bandwidth_share", "decode_small", "share_of_hbm", ">=", 0.6,
     "batch-1 decode bytes read per step / step time, over the measured device-to-device copy bandwidth, ~0.5B"),
    ("paged_attention_vs_sdpa", "attention", "worst_ratio", "<=", 1.25,
     "paged attention (Triton) time / SDPA time on the same contiguous K/V, worst case over the cases run"),
    ("moe_decode_vs_dense", "moe", "moe_over_dense_decode", "<=", 1.5,
     "decode step of a random Qwen3-MoE-like model (32 experts, top-4) / the dense Qwen3 with its active parameters, "
     "batch 48"),
]
MODULES = ("torch", "triton", "transformers", "tokenizers", "safetensors", "jinja2", "structlog", "pytest")


class Tee:
    def __init__(self, stream, path: Path) -> None:
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


class Job:
    """A subprocess in its own session, killed (with its children) past its deadline."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path, deadline: float) -> None:
        self.name, self.log_path, self.deadline, self.timed_out = name, log_path, deadline, False
        self.start = time.time()
        with open(log_path, "w") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is None and time.time() > self.deadline:
            self.timed_out = True
            self.kill()
            rc = self.proc.poll()
        return rc

    def kill(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def output(self, limit: int = 100_000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if len(text) <= limit else f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]


def wait_all(jobs: list[Job]) -> None:
    while [j.poll() for j in jobs].count(None):  # every job polled each round: each one's deadline is enforced
        time.sleep(0.3)


def child_env(device: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if device == "cpu":  # tiny matmuls on a shared CPU: one thread each (several threads spin-wait, ~30x slower)
        env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    for name in ("PAGEBATCH_KERNELS", "TRITON_INTERPRET"):
        env.pop(name, None)
    return env


# -- sections the driver runs itself ------------------------------------------------------------------------

def env_section(sec: Section, args) -> None:
    import importlib
    import importlib.metadata

    versions, missing = {}, []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", None) or importlib.metadata.version(name)
        except Exception as exc:  # noqa: BLE001
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    import torch

    versions.update(python=platform.python_version(), cuda=torch.version.cuda)
    sec.detail("versions", versions)
    sec.detail("host", dict(platform=platform.platform(), cpus=os.cpu_count(), argv=sys.argv[1:]))
    sec.figure("cpu_count", os.cpu_count() or 0)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        sec.detail("git", dict(commit=head or None, changed_files=len(dirty.splitlines())))
    except Exception as exc:  # noqa: BLE001 - the device's copy of the tree may have no git
        sec.detail("git", f"unavailable: {exc}")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device")
        props = torch.cuda.get_device_properties(0)
        sec.detail("card", torch.cuda.get_device_name(0))
        sec.figure("gpu_count", torch.cuda.device_count())
        sec.figure("gpu_memory_gib", props.total_memory / 2**30)
        sec.figure("multiprocessors", props.multi_processor_count)
        sec.figure("compute_capability", props.major + props.minor / 10)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=15).stdout.strip()
            sec.detail("nvidia_smi", smi)
        except Exception as exc:  # noqa: BLE001
            sec.detail("nvidia_smi", f"unavailable: {exc}")
    else:
        sec.detail("card", f"cpu ({platform.processor() or platform.machine()})")
    if missing:
        raise RuntimeError(f"missing modules: {'; '.join(missing)} (bash scripts/gpu_wheels.sh here, then carry .whl)")


def kernel_tests_jobs(args, workdir: Path, deadline: float, sec: Section) -> list[Job]:
    from pagebatch.jobs.bench.gpu_check.correct import collect, pytest_base, shard

    cuda = args.device.startswith("cuda")
    targets = ["tests/kernels"] if (cuda or not args.quick) else ["tests/kernels/test_triton_elementwise.py"]
    argv, env = pytest_base(interpret=not cuda)
    note = " (TRITON_INTERPRET=0: compiled for the card)" if cuda else " (TRITON_INTERPRET=1: Triton's interpreter, no GPU)"
    n = args.kernel_shards or (6 if cuda else 1)
    if n == 1:
        shards = [targets]
        sec.detail("command", " ".join(argv[1:] + targets) + note)
    else:  # collect the test ids once, then run them round-robin in n processes (Triton compiles in parallel)
        ids = collect(interpret=not cuda, targets=targets, timeout=min(120, max(5, deadline - time.time())))
        shards = shard(ids, n)
        sec.detail("command", " ".join(argv[1:]) + f" <{len(ids)} test ids from {' '.join(targets)} in {len(shards)} parallel shards>" + note)
        sec.figure("tests_collected", len(ids))
    return [Job(f"kernel_tests-{i}", argv + ids_i, env, workdir / f"kernel_tests-{i}.log", deadline) for i, ids_i in enumerate(shards)]


def kernel_tests_result(sec: Section, jobs: list[Job]) -> None:
    from pagebatch.jobs.bench.gpu_check.correct import failed_ids, parse_summary

    totals: dict[str, int] = {}
    failures, shards = [], []
    for job in jobs:
        text = job.output()
        counts = parse_summary(text)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        failures += failed_ids(text)
        shards.append(dict(name=job.name, rc=job.proc.returncode, timed_out=job.timed_out, counts=counts,
                           seconds=round(time.time() - job.start, 1)))
        if job.timed_out:
            sec.error(f"{job.name} timed out (budget {job.deadline - job.start:.0f} s)")
        elif job.proc.returncode not in (0,):
            sec.error(f"{job.name} exited {job.proc.returncode}: {text.strip().splitlines()[-1:] if text.strip() else 'no output'}")
    for key in ("passed", "failed", "skipped", "errors"):
        sec.figure(key, totals.get(key, 0))
    sec.detail("shards", shards)
    sec.detail("failures", failures[:50])
    if not totals.get("passed"):
        sec.error("no kernel test passed")


# -- the driver ------------------------------------------------------------------------------------------------

def derived(sections: dict) -> None:
    """Shares of the measured limits, added to the sections that ran."""
    fig = lambda name: sections.get(name, {}).get("figures", {})  # noqa: E731
    bw, peak = fig("hbm_bandwidth").get("gb_s"), fig("matmul_peak").get("tflops")
    for which in ("small", "large"):
        d, pf = fig(f"decode_{which}"), fig(f"prefill_{which}")
        if bw and "achieved_gb_s" in d:
            d["share_of_hbm"] = round(d["achieved_gb_s"] / bw, 4)
        if peak and "achieved_tflops" in pf:
            pf["share_of_matmul_peak"] = round(pf["achieved_tflops"] / peak, 4)


def evaluate_targets(sections: dict, dry_run: bool) -> dict:
    out = {}
    for name, section, figure, op, threshold, what in TARGETS:
        value = sections.get(section, {}).get("figures", {}).get(figure)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out[name] = dict(value=value, comparison=op, threshold=threshold, met=met, basis=f"{section}.{figure}: {what}")
        if value is None:
            out[name]["note"] = f"not measured ({section}: {sections.get(section, {}).get('status', 'missing')})"
        if dry_run:
            out[name]["note"] = "CPU dry run with tiny shapes: indicative of nothing"
    return out


def summary_lines(report: dict) -> list[str]:
    keys = {
        "kernel_tests": ("passed", "failed", "skipped"), "parity": ("tokens_compared", "near_ties_tolerated", "failures"),
        "cuda_graphs": ("float32_mismatches", "bfloat16_mismatches"), "hbm_bandwidth": ("gb_s",), "matmul_peak": ("tflops",),
        "attention": ("worst_ratio", "gmean_ratio"),
        "throughput_small": ("pagebatch_tok_s", "speedup_vs_static", "speedup_vs_continuous", "prefix_speedup_vs_continuous"),
        "throughput_large": ("pagebatch_tok_s", "speedup_vs_static", "speedup_vs_continuous"),
        "decode_small": ("step_ms", "achieved_gb_s", "share_of_hbm"), "decode_large": ("step_ms", "achieved_gb_s", "share_of_hbm"),
        "prefill_small": ("achieved_tflops", "share_of_matmul_peak"), "prefill_large": ("achieved_tflops", "share_of_matmul_peak"),
        "moe": ("pagebatch_tok_s", "speedup_vs_static", "moe_over_dense_decode"),
    }
    lines = [f"card: {report['card']}  torch {report['versions'].get('torch')}  triton {report['versions'].get('triton')}  "
             f"transformers {report['versions'].get('transformers')}  total {report['duration_s']:.0f} s"]
    for name in SECTIONS:
        s = report["sections"][name]
        figs = ", ".join(f"{k}={s['figures'][k]:.4g}" for k in keys.get(name, ()) if k in s["figures"])
        why = s.get("reason") or s.get("error") or ""
        lines.append(f"  {name:<17} {s['status']:<7} {s.get('duration_s', 0):6.1f} s  {figs}{'  | ' + why[:160] if why else ''}")
    for name, t in report["targets"].items():
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        verdict = {True: "MET", False: "MISSED", None: "UNKNOWN"}[t["met"]]
        lines.append(f"  target {name}: {value} {t['comparison']} {t['threshold']} -> {verdict}")
    return lines


def merge(recorder: Recorder, args, jobs: dict[str, Job], final: bool = False, skip: set[str] = frozenset()) -> None:
    """Sections the children wrote, and for those they could not: why."""
    for child, names in CHILDREN.items():
        path = args.workdir / "sections" / f"{child}.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        job = jobs.get(child)
        for name in names:
            rec = data.get(name)
            if rec is not None and rec.get("status") == "running" and job is not None and job.proc.poll() is not None:
                why = (f"timed out: its process was stopped at its {job.deadline - job.start:.0f} s cap" if job.timed_out
                       else f"its process died (rc {job.proc.returncode})")
                rec.update(status="fail", error=why + f"; log tail: {job.output(600)}"[-900:])
            if rec is None and final:
                if child in skip:
                    rec = dict(status="skipped", reason=f"--skip {child}")
                elif job is None:
                    rec = dict(status="skipped", reason="not started: the run's time budget was spent")
                else:
                    rec = dict(status="fail", error=f"not recorded: {child} process rc {job.proc.returncode}"
                               + (" (timed out)" if job.timed_out else "") + f"; log tail: {job.output(600)}"[-900:])
                rec.update(duration_s=0.0, budget_s=0.0, figures={}, details={})
            if rec is not None:
                recorder.data[name] = rec


