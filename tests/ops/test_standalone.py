"""`pagebatch standalone`: one command runs Redis, the API and a worker; it serves a batch end to end
through the openai SDK; Ctrl-C (or killing it outright) leaves no process behind; its logs are JSON
lines that carry the batch id, shard and request id."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from pagebatch.jobs.store.registry import live_workers
from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status
from tests.ops.procs import descendants, running
from tests.service_fixtures import free_port, wait_for

READY = "pagebatch standalone is ready"


def command(*args: str) -> list[str]:
    exe = shutil.which("pagebatch")
    return ([exe] if exe else [sys.executable, "-m", "pagebatch.jobs.commands.cli"]) + list(args)


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGEBATCH_", "AWS_"))}
    env.update({"PAGEBATCH_STORAGE": str(tmp / "storage"), "PAGEBATCH_API_KEYS": "key-local=tenant-local",
                "PAGEBATCH_LOG_FORMAT": "json", "PAGEBATCH_SHARD_SIZE": "4", "PAGEBATCH_POLL_INTERVAL_S": "0.2",
                "OMP_NUM_THREADS": "1", **extra})
    return env


def kind(argv: list[str]) -> str:
    if argv and "redis-server" in argv[0]:  # redis rewrites its title: "/usr/bin/redis-server 127.0.0.1:PORT"
        return "redis"
    command = " ".join(argv)
    if "multiprocessing.spawn" in command:  # the worker's engine core (engine/core_process.py)
        return "engine core"
    if "multiprocessing.resource_tracker" in command:  # started with the core by multiprocessing's spawn
        return "resource tracker"
    if "pagebatch.jobs.commands.cli" in argv[:-1]:
        return argv[argv.index("pagebatch.jobs.commands.cli") + 1]  # the subcommand: api / worker
    return " ".join(argv)


@dataclass
class Standalone:
    proc: subprocess.Popen
    out: Path
    err: Path
    family: dict[int, list[str]] = field(default_factory=dict)

    @classmethod
    def start(cls, tmp: Path, model: Path, port: int, env: dict[str, str]) -> Standalone:
        out, err = tmp / "stdout.txt", tmp / "stderr.txt"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(command("standalone", "--model", str(model), "--port", str(port),
                                            "--stop-timeout", "10"), env=env, stdout=o, stderr=e)
        run = cls(proc, out, err)
        try:
            wait_for(lambda: run.ready(), 120, "standalone to be ready", interval=0.2)
        except BaseException:  # a start that never got ready must not leave its Redis, API or worker behind
            for pid in [*descendants(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            raise
        run.family = descendants(proc.pid)
        return run

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"standalone exited:\n{self.err.read_text()[-3000:]}"
        return READY in self.out.read_text()

    def kinds(self) -> list[str]:
        return sorted(kind(argv) for argv in self.family.values())

    def leftovers(self) -> dict[int, list[str]]:
        return {pid: argv for pid, argv in self.family.items() if running(pid)}

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.leftovers():
            os.kill(pid, signal.SIGKILL)


@dataclass
class Outcome:
    run: Standalone
    batch: object
    output: list[dict]
    exit_code: int
    stop_seconds: float


@pytest.fixture(scope="module")
def standalone_run(tmp_path_factory, tiny_model) -> Outcome:
    """One whole life: start (own Redis), a batch through the openai SDK, then Ctrl-C."""
    from openai import OpenAI

    tmp = tmp_path_factory.mktemp("standalone")
    port = free_port()
    env = base_env(tmp, PAGEBATCH_LOG_LEVEL="DEBUG")
    run = Standalone.start(tmp, tiny_model, port, env)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="key-local", max_retries=0, timeout=30)
        lines = [chat_line(f"s-{i}", tiny_model.name, f"summarize item {i}", max_tokens=4) for i in range(10)]
        batch = wait_status(client, submit(client, lines).id, timeout=90, logs=lambda: run.err.read_text()[-3000:])
        output = read_jsonl(client, batch.output_file_id)
        run.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        exit_code = run.proc.wait(40)
        return Outcome(run, batch, output, exit_code, time.monotonic() - started)
    finally:
        run.cleanup()


def test_standalone_runs_its_own_redis_an_api_and_one_worker(standalone_run):
    assert standalone_run.run.kinds() == ["api", "engine core", "redis", "resource tracker", "worker"], \
        standalone_run.run.family
    ready = standalone_run.run.out.read_text()
    assert "(own, not persisted)" in ready and "key-local" not in ready  # configured keys are not printed


def test_standalone_serves_a_batch_end_to_end(standalone_run):
    batch = standalone_run.batch
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed) == (10, 10)
    assert sorted(o["custom_id"] for o in standalone_run.output) == sorted(f"s-{i}" for i in range(10))


def test_ctrl_c_stops_everything_and_leaves_no_process(standalone_run):
    assert standalone_run.exit_code == 0, standalone_run.run.err.read_text()[-3000:]
    assert standalone_run.stop_seconds < 20
    assert standalone_run.run.family and standalone_run.run.leftovers() == {}


def test_logs_are_json_lines_with_batch_shard_and_request_ids(standalone_run):
    lines = [line for line in standalone_run.run.err.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line, Celery's and uvicorn's included, is JSON
        assert {"event", "level", "timestamp", "logger"} <= set(record), record
        records.append(record)
    batch_id = standalone_run.batch.id

    created = [r for r in records if r["event"] == "batch created"]
    assert created and created[0]["batch_id"] == batch_id and created[0]["request_id"]  # the HTTP request's id

    shard_lines = [r for r in records if r["logger"] == "pagebatch.jobs.pipeline.shard"]
    assert {r["event"] for r in shard_lines} >= {"shard started", "shard done"}
    assert all(r["batch_id"] == batch_id and isinstance(r["shard"], int) for r in shard_lines)
    assert {r["shard"] for r in shard_lines} == {0, 1, 2}  # 10 lines in shards of 4

    finished = [r for r in records if r["event"] == "request finished"]
    assert len(finished) == 10
    for r in finished:
        assert r["batch_id"] == batch_id and r["request_id"].startswith(f"{batch_id}-{r['shard']}-")
        assert r["completion_tokens"] > 0 and r["total_time"] >= r["time_to_first_token"] >= 0

    # Celery's own lines about a task carry its batch id too
    celery = [r for r in records if r["logger"] == "celery.app.trace" and "succeeded" in r["event"]]
    assert celery and all(r.get("batch_id") == batch_id for r in celery)


def test_a_given_redis_is_used_and_a_hard_kill_leaves_no_process(tmp_path, tiny_model, redis_server):
    port = free_port()
    env = base_env(tmp_path, PAGEBATCH_REDIS_URL=redis_server.url)
    run = Standalone.start(tmp_path, tiny_model, port, env)
    try:
        assert run.kinds() == ["api", "engine core", "resource tracker", "worker"]  # no redis-server of its own
        assert "(given)" in run.out.read_text()
        worker_pid = next(pid for pid, argv in run.family.items() if kind(argv) == "worker")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        assert any(w.endswith(f"-{worker_pid}") for w in live_workers(client))

        run.proc.kill()  # SIGKILL: no chance to clean up; the children must notice on their own
        run.proc.wait(10)
        wait_for(lambda: not run.leftovers(), 30, "the orphaned children to exit")
    finally:
        run.cleanup()


def test_without_redis_server_the_error_says_what_to_install(tmp_path, tiny_model):
    env = base_env(tmp_path, PATH=str(tmp_path))  # no redis-server anywhere on PATH
    done = subprocess.run([sys.executable, "-m", "pagebatch.jobs.commands.cli", "standalone", "--model", str(tiny_model)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "redis-server was not found on PATH" in done.stderr
    assert "apt-get install redis-server" in done.stderr and "PAGEBATCH_REDIS_URL" in done.stderr
