"""One-call GPU check of pagebatch: correctness on the card, throughput against transformers on the same card,
and figures against the card's own measured limits. Writes $OUT/gpu_report.json and $OUT/gpu_check.log.

Prepare here, once (wheels of what the engine imports that the GPU image lacks, into .whl/, git-ignored):

    bash scripts/gpu_wheels.sh

Then on the GPU machine, as one command, with carry: [".whl"] (under 8 minutes; --budget sets the limit):

    bash scripts/gpu_check.sh --out $OUT      # the carried wheels and the tree made importable, then this script

Dry run here, on CPU with tiny shapes (what tests/ops/test_gpu_check.py runs):

    bash scripts/gpu_check.sh --device cpu --quick --out /tmp/gpu-check-dry

Sections (each with its own time budget, recorded pass / fail / skipped with its reason, never aborting the run):
env; kernel_tests (pytest tests/kernels compiled for the card, sharded); parity (engine greedy vs transformers,
llama/mistral/qwen2/qwen3 and qwen3_moe/mixtral/olmoe/gemma3/phi3, fp32 and bf16, no kernel replaced by the
start-up self-check); cuda_graphs (graph replay vs eager decode); torch_backend
(kernels=torch); models (random ~0.5B Qwen2.5-like and ~8B Llama-3-like bf16 checkpoints made on the card);
hbm_bandwidth, matmul_peak, attention (paged attention vs SDPA); throughput_small / throughput_large
(pagebatch vs transformers static batches and continuous batching, mixed and shared-prefix workloads);
decode_* (batch-1 decode vs bandwidth) and prefill_* (vs matmul peak); moe (a random Qwen3-MoE-like model: throughput
vs transformers, decode step at batch 48 vs the dense model with its active parameters). Correctness, kernel tests and the
checkpoints run concurrently first; the timed sections run one at a time after, with the card to themselves.
See docs/gpu.md.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from pagebatch.jobs.bench.gpu_check.common import SECTIONS, Recorder, Section, log, plan
from pagebatch.jobs.bench.gpu_check.driver import (
    Job,
    Tee,
    child_env,
    derived,
    env_section,
    evaluate_targets,
    kernel_tests_jobs,
    kernel_tests_result,
    merge,
    summary_lines,
    wait_all,
)


def child_argv(args, name: str, deadline: float) -> list[str]:
    argv = [sys.executable, "-m", "pagebatch.jobs.bench.gpu_check.main", "--child", name, "--deadline", f"{deadline:.1f}",
            "--device", args.device, "--workdir", str(args.workdir)]
    argv += ["--quick"] if args.quick else []
    argv += ["--small-requests", str(args.small_requests)] if args.small_requests else []
    argv += ["--large-requests", str(args.large_requests)] if args.large_requests else []
    return argv


def run_child(args) -> int:
    import torch
    from pagebatch.jobs.bench.gpu_check.bench import run_models, run_throughput
    from pagebatch.jobs.bench.gpu_check.correct import run_correctness
    from pagebatch.jobs.bench.gpu_check.limits import run_limits
    from pagebatch.jobs.bench.gpu_check.moe import run_moe

    workdir = Path(args.workdir)
    recorder = Recorder(workdir / "sections" / f"{args.child}.json")
    p = plan(args.quick, args.device.startswith("cuda"), args.small_requests, args.large_requests)
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(1)
    run = {
        "correctness": lambda: run_correctness(recorder, p, args.device, workdir, args.deadline),
        "models": lambda: run_models(recorder, p, args.device, workdir, args.deadline),
        "limits": lambda: run_limits(recorder, p, args.device, workdir, args.deadline),
        "small": lambda: run_throughput(recorder, p, args.device, workdir, args.deadline, "small"),
        "moe": lambda: run_moe(recorder, p, args.device, workdir, args.deadline),
        "large": lambda: run_throughput(recorder, p, args.device, workdir, args.deadline, "large"),
    }[args.child]
    run()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="report folder (default $OUT)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny models and a handful of requests (the CPU dry run)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 440; 80 with --quick)")
    ap.add_argument("--workdir", default="/tmp/pagebatch-gpu-check", help="checkpoints and child logs (not $OUT)")
    ap.add_argument("--small-requests", type=int, default=None, help="requests of the ~0.5B throughput run (256)")
    ap.add_argument("--large-requests", type=int, default=None, help="requests of the ~8B throughput run (64)")
    ap.add_argument("--skip", default="", help="comma list of: kernel_tests,correctness,models,limits,small,moe,large")
    ap.add_argument("--kernel-shards", type=int, default=None, help="parallel pytest processes (6 on CUDA)")
    ap.add_argument("--serial", action="store_true", help="on CPU too, the timed sections one at a time (as on a GPU)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workdir = Path(args.workdir).resolve()
    (args.workdir / "sections").mkdir(parents=True, exist_ok=True)
    if args.child:
        return run_child(args)

    t0 = time.time()
    budget = args.budget or (80.0 if args.quick else 440.0)
    end = t0 + budget
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "gpu_check.log"
    log_file.write_text("")
    sys.stdout = Tee(sys.__stdout__, log_file)
    sys.stderr = Tee(sys.__stderr__, log_file)
    for stale in (args.workdir / "sections").glob("*.json"):
        stale.unlink()
    skip = set(filter(None, args.skip.split(",")))
    recorder = Recorder(None)
    report = {"card": None, "device": args.device, "dry_run": args.device != "cuda" or args.quick, "versions": {},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget, "duration_s": 0.0,
              "sections": recorder.data, "targets": {}, "summary": []}

    def write() -> None:
        report["duration_s"] = round(time.time() - t0, 1)
        (out / "gpu_report.json").write_text(json.dumps(report, indent=1, default=str))

    jobs: dict[str, Job] = {}
    kt_jobs: list[Job] = []
    try:
        log(f"gpu_check: device={args.device} quick={args.quick} budget={budget:.0f} s out={out} workdir={args.workdir}")

        def remaining() -> float:
            return end - time.time()

        def start(child: str, stop: float) -> Job:
            jobs[child] = Job(child, child_argv(args, child, stop - 4), child_env(args.device), args.workdir / f"{child}.log", stop)
            return jobs[child]

        # Phase A, concurrently: kernel tests, correctness on tiny models, making the big checkpoints (and env here).
        cap_a = min(55.0 if args.quick else 150.0, remaining() * (0.55 if args.quick else 0.4))
        for child in ("correctness", "models"):
            if child not in skip:
                start(child, time.time() + cap_a)
        kt = Section(recorder, "kernel_tests", cap_a)
        recorder.data["kernel_tests"] = kt.rec
        if "kernel_tests" in skip:
            kt.rec.update(status="skipped", reason="--skip kernel_tests")
        else:
            try:
                kt_jobs = kernel_tests_jobs(args, args.workdir, time.time() + cap_a, kt)
            except Exception as exc:  # noqa: BLE001
                kt.rec.update(status="fail", error=f"{type(exc).__name__}: {exc}"[:2000])
        env = recorder.run("env", 60, lambda s: env_section(s, args))
        report["card"] = env.rec["details"].get("card")
        report["versions"] = env.rec["details"].get("versions", {})
        write()
        wait_all(list(jobs.values()) + kt_jobs)
        if kt_jobs:
            kernel_tests_result(kt, kt_jobs)
            kt.rec.update(status="fail" if kt.errors else "pass")
            if kt.errors:
                kt.rec["error"] = "; ".join(kt.errors)[:2000]
        if kt.rec["status"] != "skipped":
            kt.save()
        log(f"[kernel_tests] {kt.rec['status']} in {kt.rec['duration_s']:.1f} s {kt.rec['figures']}")
        merge(recorder, args, jobs)
        write()

        # Phase B: the limits, then ~0.5B, then ~8B throughput, one at a time with the card to themselves.
        # On CPU (a dry run, whose timings mean nothing) they run concurrently to keep the dry run short.
        phase_b = [c for c in ("limits", "small", "moe", "large") if c not in skip]
        if args.device == "cpu" and not args.serial:
            wait_all([start(c, end - 3) for c in phase_b])
        else:
            for child, cap in (("limits", 25 if args.quick else 45), ("small", 40 if args.quick else 140),
                               ("moe", 20 if args.quick else 45), ("large", 1e9)):
                if child not in phase_b or remaining() - 5 < (5 if args.quick else 30):
                    continue  # its sections are recorded as skipped below
                job = start(child, time.time() + min(cap, remaining() - 5))
                wait_all([job])
                log(f"[{child}] child finished: rc={job.proc.returncode}{' (timed out)' if job.timed_out else ''}")
                merge(recorder, args, jobs)
                write()

        merge(recorder, args, jobs, final=True, skip=skip)
        derived(recorder.data)
        report["sections"] = {name: recorder.data[name] for name in SECTIONS}
        report["targets"] = evaluate_targets(report["sections"], report["dry_run"])
        report["summary"] = summary_lines(report | {"duration_s": time.time() - t0})
        write()
        for name, job in list(jobs.items()) + [(j.name, j) for j in kt_jobs]:
            print(f"\n===== log of {name} (rc {job.proc.returncode}{', timed out' if job.timed_out else ''}) =====\n{job.output()}")
        print("\n===== summary =====\n" + "\n".join(report["summary"]))
        failed = [n for n, s in report["sections"].items() if s["status"] not in ("pass", "skipped")]
        print(f"report: {out / 'gpu_report.json'}; {len(failed)} section(s) not passed{': ' + ', '.join(failed) if failed else ''}")
        sys.stdout.flush()
        return 1 if failed else 0

    except Exception as exc:  # noqa: BLE001 - a bug of the driver still leaves a report behind
        report["driver_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        write()
        print(f"gpu_check driver failed: {report['driver_error']}", flush=True)
        return 2
    finally:
        for job in list(jobs.values()) + kt_jobs:  # none outlives the driver
            if job.proc.poll() is None:
                job.kill()


if __name__ == "__main__":
    sys.exit(main())
