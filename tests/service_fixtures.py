"""Real services for the jobs/api tests: redis-server, moto's S3 server, `pagebatch api` and `pagebatch worker`.

Everything listens on 127.0.0.1 on free ports and is stopped at the end.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

API_KEYS = {f"key-{t}": f"tenant-{t}" for t in "abcdefghlsmovijknpq"}
STACK_LIMITS = {
    "PAGEBATCH_MAX_UPLOAD_BYTES": str(256 * 1024),
    "PAGEBATCH_MAX_BATCH_BYTES": str(128 * 1024),
    "PAGEBATCH_MAX_BATCH_LINES": "300",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throwaway redis-server; without ``appendonly`` a restart loses everything, on purpose."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(client.ping, 10, "redis-server")
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF already holds survives."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_s: float = 0.5, *, kill: bool = False, wipe: bool = False) -> None:
        self.kill() if kill else self.stop()
        time.sleep(down_s)
        if wipe:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.start()


@dataclass
class S3:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"pb-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


class Process:
    """A `pagebatch` subcommand run as a real child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        exe = shutil.which("pagebatch")
        cmd = [exe] if exe else [sys.executable, "-m", "pagebatch.jobs.commands.cli"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd + self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@dataclass
class Stack:
    """redis + S3 (moto) + one API + workers, all real processes."""

    redis: RedisServer
    env: dict[str, str]
    model_path: Path
    logdir: Path
    api_port: int = field(default_factory=free_port)
    api: Process | None = None
    workers: list[Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v1"

    @property
    def model(self) -> str:
        return self.model_path.name

    def start_api(self) -> Process:
        self.api = Process(["api", "--host", "127.0.0.1", "--port", str(self.api_port)], self.env,
                           self.logdir / "api.log").start()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{self.api_port}/healthz", timeout=2).status_code == 200,
                 60, "the API", interval=0.2)
        return self.api

    def start_worker(self, *extra: str, wait: bool = True, model: Path | None = None) -> Process:
        """A worker serving ``model`` (default: the stack's model)."""
        n = len(self.workers)
        worker = Process(["worker", "--model", str(model or self.model_path), "--concurrency", "4", *extra], self.env,
                         self.logdir / f"worker-{n}.log").start()
        self.workers.append(worker)
        if wait:
            self.wait_worker_ready(worker)
        return worker

    def wait_worker_ready(self, worker: Process, timeout: float = 90) -> None:
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        pid = worker.proc.pid

        def ready() -> bool:
            assert worker.alive(), f"worker exited:\n{worker.tail()}"
            return any(k.endswith(f"-{pid}") for k in client.scan_iter("pb:worker:*"))

        wait_for(ready, timeout, "the worker to register", interval=0.2)

    def client(self, tenant: str = "a", **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=f"key-{tenant}", max_retries=0, timeout=30, **kwargs)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.api:
            self.api.stop()

    def logs(self) -> str:
        parts = [f"--- {p.log.name}\n{p.tail()}" for p in [self.api, *self.workers] if p]
        return "\n".join(parts)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3(f"http://127.0.0.1:{port}", "")
    wait_for(lambda: s3.client().list_buckets() is not None, 30, "moto")
    yield s3
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from pagebatch.engine.make_model import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


def stack_env(redis_server: RedisServer, s3: S3, bucket: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAGEBATCH_", "AWS_"))}
    env.update(s3.env())
    env.update({
        "PAGEBATCH_REDIS_URL": redis_server.url,
        "PAGEBATCH_STORAGE": f"s3://{bucket}/pagebatch",
        "PAGEBATCH_API_KEYS": ",".join(f"{k}={v}" for k, v in API_KEYS.items()),
        "PAGEBATCH_INBOX_BUCKETS": "pb-*=tenant-s",  # moto buckets made by the tests; tenant-s runs the trigger tests
        "PAGEBATCH_SHARD_SIZE": "8",
        "PAGEBATCH_VISIBILITY_TIMEOUT": "10",
        "PAGEBATCH_POLL_INTERVAL_S": "0.2",
        "PAGEBATCH_PROGRESS_INTERVAL_S": "0.3",
        "PAGEBATCH_SWEEP_INTERVAL_S": "1",
        "PAGEBATCH_LOG_FORMAT": "json",
        "OMP_NUM_THREADS": "1",
        **STACK_LIMITS,
    })
    env.update(overrides)
    return env


@pytest.fixture
def make_stack(tmp_path, moto_s3, tiny_model):
    """A fresh stack (own redis-server, own bucket) for tests that break things."""
    made: list[tuple[Stack, RedisServer]] = []

    def make(appendonly: bool = False, **overrides: str) -> Stack:
        server = RedisServer(tmp_path / f"redis-{len(made)}", appendonly).start()
        env = stack_env(server, moto_s3, moto_s3.new_bucket(), **overrides)
        stack = Stack(server, env, tiny_model, tmp_path / f"logs-{len(made)}")
        made.append((stack, server))
        stack.start_api()
        return stack

    yield make
    for stack, server in made:
        stack.stop()
        server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, moto_s3, tiny_model) -> Iterator[Stack]:
    """The shared stack: one redis-server, one API, one worker; tests keep apart by tenant."""
    root = tmp_path_factory.mktemp("stack")
    server = RedisServer(root / "redis").start()
    env = stack_env(server, moto_s3, moto_s3.new_bucket())
    shared = Stack(server, env, tiny_model, root / "logs")
    try:
        shared.start_api()
        # float32: tests on this stack compare the service's logprobs with an in-process float32 engine
        # (make_stack's stacks run the default dtype, bfloat16 on CPUs that compute it natively).
        shared.start_worker("--dtype", "float32")
        yield shared
    finally:
        shared.stop()
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A plain redis-server for tests of the Redis-backed parts on their own."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
