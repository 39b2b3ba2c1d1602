"""Throughput of the full service stack against `pagebatch run`, on the same workload, in one run.

    python jobs/bench/service.py [--requests 2000] [--max-tokens 48] [--preset small] [--storage moto|local]
                                 [--profile DIR]

In-process: `pagebatch run INPUT --model M --out DIR` (its own timing, model load excluded).
Stack: redis-server + S3 (moto's server, or a local directory) + `pagebatch api` + one `pagebatch worker`,
driven by the openai SDK: upload, create, poll until completed, download the output (warm worker).
Both run on this machine, alternating --repeats times; the ratio compares the best run of each.

Each run also reports lines/s, the peak RSS of every process tree (the API, the worker with its children,
redis-server, and `pagebatch run`; sampled from /proc) and, for the stack, where the time went: upload,
validating (prepare: validate and split into shards), in progress (shards queued and run), finalizing
(merging the shards' results), download, as seen by the client polling the batch every 0.1 s. The
workload is written and uploaded streaming, and the output is downloaded to a file, so the bench itself
holds no file in memory. ``--profile DIR``: py-spy samples the API and the worker (raw collapsed stacks).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from pagebatch.jobs.bench.process_memory import PeakRss

WORDS = ("the a of batch model token prompt cache block queue worker result label summary document review "
         "positive negative neutral price quality delivery fast slow storage engine latency").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pagebatch_cmd() -> list[str]:
    exe = shutil.which("pagebatch")
    return [exe] if exe else [sys.executable, "-m", "pagebatch.jobs.commands.cli"]


def write_workload(path: Path, model: str, requests: int, max_tokens: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(requests):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                    "temperature": 0.8, "seed": i, "ignore_eos": True}  # fixed lengths: both sides do equal work
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")


def workload_limits(workload: Path, requests: int) -> dict[str, str]:
    """Settings that admit the workload whole (the defaults stop at OpenAI's 50,000 lines and 200 MiB)."""
    size = str(max(workload.stat().st_size, 200 * 2**20))
    return {"PAGEBATCH_MAX_BATCH_LINES": str(max(requests, 50_000)), "PAGEBATCH_MAX_BATCH_BYTES": size,
            "PAGEBATCH_MAX_UPLOAD_BYTES": size}


def run_in_process(workload: Path, model: Path, out: Path, limits: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEBATCH_")} | limits
    with PeakRss() as memory:
        proc = subprocess.Popen([*pagebatch_cmd(), "run", str(workload), "--model", str(model), "--out", str(out),
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        memory.watch("run", proc.pid)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, stdout, stderr)
    seconds = float(re.search(r"generated in ([0-9.]+)s", stdout).group(1))
    batch = json.loads((out / "batch.json").read_text())
    return {"seconds": seconds, "completed": batch["request_counts"]["completed"],
            "output_tokens": batch["usage"]["output_tokens"], "peak_rss_mib": memory.mib(),
            "rss_timeline_mib": memory.timeline}


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "50", "--threads",
                             "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run_stack(workload: Path, model: Path, workdir: Path, storage: str, concurrency: int, shard_size: int,
              log_level: str = "WARNING", profile: Path | None = None, limits: dict[str, str] | None = None) -> dict:
    from openai import OpenAI

    procs: list[subprocess.Popen] = []
    profilers: list[subprocess.Popen] = []
    memory = PeakRss()
    moto = None
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEBATCH_")}
    env.update({"PAGEBATCH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PAGEBATCH_API_KEYS": "bench-key=bench",
                "PAGEBATCH_SHARD_SIZE": str(shard_size), "PAGEBATCH_LOG_LEVEL": log_level, **(limits or {})})
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        memory.__enter__()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL))
        wait(lambda: redis.Redis(port=redis_port).ping(), 10, "redis-server")
        memory.watch("redis", procs[-1].pid)
        if storage == "moto":
            import logging

            import boto3
            from moto.server import ThreadedMotoServer
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            moto_port = free_port()
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
            moto.start()
            aws = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{moto_port}", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
            boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL_S3"], aws_access_key_id="bench",
                         aws_secret_access_key="bench", region_name="us-east-1").create_bucket(Bucket="bench")
            env.update(aws, PAGEBATCH_STORAGE="s3://bench/pagebatch")
        else:
            env["PAGEBATCH_STORAGE"] = str(workdir / "storage")
        logs = (workdir / "stack.log").open("w")
        procs.append(subprocess.Popen([*pagebatch_cmd(), "api", "--port", str(api_port)], env=env, stdout=logs,
                                      stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([*pagebatch_cmd(), "worker", "--model", str(model), "--concurrency",
                                       str(concurrency)], env=env, stdout=logs, stderr=subprocess.STDOUT))
        wait(lambda: httpx.get(f"http://127.0.0.1:{api_port}/healthz").json()["workers"], 120, "api and worker")
        memory.watch("api", procs[-2].pid)
        memory.watch("worker", procs[-1].pid)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            profilers = [start_profiler(procs[-2].pid, profile / "api.txt"),
                         start_profiler(procs[-1].pid, profile / "worker.txt")]

        client = OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="bench-key", timeout=3600)
        started = time.perf_counter()
        with workload.open("rb") as f:
            file = client.files.create(file=(workload.name, f), purpose="batch")
        uploaded = time.perf_counter()
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        seen = {batch.status: time.perf_counter()}  # when the client first saw each status
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.1)
            batch = client.batches.retrieve(batch.id)
            seen.setdefault(batch.status, time.perf_counter())
        finished = time.perf_counter()
        output_lines = 0
        if batch.output_file_id:
            with client.files.with_streaming_response.content(batch.output_file_id) as response:
                for chunk in response.iter_bytes(1 << 20):
                    output_lines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
        assert batch.status == "completed", batch
        return {"seconds": seconds, "completed": batch.request_counts.completed,
                "output_tokens": batch.usage.output_tokens, "output_lines": output_lines,
                "phases_s": phases(started, uploaded, seen, finished, started + seconds),
                "peak_rss_mib": memory.mib(), "rss_timeline_mib": memory.timeline}
    finally:
        memory.__exit__(None, None, None)
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.kill()
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if moto is not None:
            moto.stop()


def phases(started: float, uploaded: float, seen: dict[str, float], finished: float, downloaded: float
           ) -> dict[str, float]:
    """Seconds spent uploading, in each status the client saw (to 0.1 s), and downloading the output."""
    marks = [("upload", started), ("create", uploaded)]
    marks += sorted(((status, at) for status, at in seen.items() if status != "completed"), key=lambda m: m[1])
    marks += [("download", finished), ("end", downloaded)]
    return {name: round(marks[i + 1][1] - at, 2) for i, (name, at) in enumerate(marks[:-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "bench"])
    parser.add_argument("--storage", default="moto", choices=["moto", "local"])
    parser.add_argument("--concurrency", type=int, default=4, help="worker shard concurrency")
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--log-level", default="WARNING", help="the stack's PAGEBATCH_LOG_LEVEL")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy samples of the API and the worker in DIR/api.txt and DIR/worker.txt")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the two runs this many times and compare the best of each "
                             "(this machine is shared: the best run is the least disturbed one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pagebatch-bench-") as tmp:
        workdir = Path(tmp)
        model = workdir / f"bench-{args.preset}"
        subprocess.run([*pagebatch_cmd(), "make-model", str(model), "--preset", args.preset], check=True,
                       capture_output=True)
        workload = workdir / "workload.jsonl"
        write_workload(workload, model.name, args.requests, args.max_tokens)
        limits = workload_limits(workload, args.requests)

        local_runs, stack_runs = [], []
        for n in range(args.repeats):
            local_runs.append(run_in_process(workload, model, workdir / f"inproc-{n}", limits))
            stack_runs.append(run_stack(workload, model, workdir / f"stack-{n}", args.storage, args.concurrency,
                                        args.shard_size, args.log_level, args.profile, limits))
            print(f"round {n + 1}: in-process {local_runs[-1]['seconds']:.2f}s, stack {stack_runs[-1]['seconds']:.2f}s "
                  f"{stack_runs[-1]['phases_s']}", flush=True)
        local = min(local_runs, key=lambda r: r["seconds"])
        stack = min(stack_runs, key=lambda r: r["seconds"])

    stack_name = "stack (api + 1 worker, moto S3)" if args.storage == "moto" else "stack (api + 1 worker, local dir)"
    for name, r in (("in-process (pagebatch run)", local), (stack_name, stack)):
        print(f"{name:40s} {r['completed']} requests, {r['output_tokens']} tokens in {r['seconds']:.2f}s: "
              f"{r['completed'] / r['seconds']:.1f} lines/s, {r['output_tokens'] / r['seconds']:.0f} tok/s; "
              f"peak RSS MiB {r['peak_rss_mib']}")
    print(f"stack time by phase (s): {stack['phases_s']}")
    ratio = (stack["completed"] / stack["seconds"]) / (local["completed"] / local["seconds"])
    print(f"stack / in-process throughput: {ratio:.3f} ({'within' if ratio >= 0.9 else 'NOT within'} 10%)")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(json.dumps({"in_process": local, "stack": stack, "ratio": round(ratio, 4), **settings,
                      "all_seconds": {"in_process": [r["seconds"] for r in local_runs],
                                      "stack": [round(r["seconds"], 2) for r in stack_runs]}}))
    complete = all(r["completed"] == args.requests for r in local_runs + stack_runs)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
