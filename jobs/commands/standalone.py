"""`pagebatch standalone`: the whole service on one machine, started and stopped as one unit.

It runs, as child processes: a redis-server of its own (unless PAGEBATCH_REDIS_URL names one), the
API and one worker. Each child has its own process group, so a terminal's Ctrl-C reaches only this
supervisor, which stops the API and the worker first (Celery's warm shutdown lets running shards
finish), Redis last, and kills any group that outlives the grace period. A shard cut off that way
runs again later: from the broker when Redis keeps its data, else restored from storage.
"""
from __future__ import annotations

import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from pagebatch.jobs.logs import configure_logging, get_logger
from pagebatch.jobs.commands.procs import Child, spawn, stop_all
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store.registry import live_workers

log = get_logger(__name__)

REDIS_MISSING = (
    "pagebatch standalone: redis-server was not found on PATH. Without PAGEBATCH_REDIS_URL it runs a "
    "Redis of its own, so it needs the binary. Install Redis (Debian/Ubuntu: sudo apt-get install "
    "redis-server; Fedora: sudo dnf install redis; macOS: brew install redis; conda: conda install -c "
    "conda-forge redis-server), or set PAGEBATCH_REDIS_URL=redis://HOST:6379/0 to use a Redis you run."
)
LOCAL_TENANT = "local"


class StandaloneError(RuntimeError):
    """A problem the user can fix (said in the message); nothing was left running."""


@dataclass
class StandalonePlan:
    model: str  # checkpoint directory
    model_name: str  # the name requests use
    host: str = "127.0.0.1"
    port: int = 8000
    worker_args: list[str] = field(default_factory=list)  # engine and concurrency flags for `pagebatch worker`
    redis_dir: Path | None = None  # keep Redis' data (AOF) here; default: a temp dir, no persistence
    stop_timeout_s: float = 20.0


class _Stop:
    """SIGINT / SIGTERM / SIGHUP ask for a clean stop; a second one skips the grace period."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()

    def __call__(self, signum: int, _: FrameType | None) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()

    def install(self) -> dict[int, Any]:
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise StandaloneError(REDIS_MISSING)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pagebatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "pagebatch.jobs.commands.cli", *args]


def start_redis(binary: str, workdir: Path, persist: bool, env: dict[str, str], stop: _Stop) -> tuple[Child, str]:
    """A redis-server on a free loopback port; a few tries, since a free port can be taken meanwhile."""
    durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
    for _ in range(5):
        port = _free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                *durability, "--maxmemory-policy", "noeviction", "--loglevel", "warning"]
        child = spawn("redis", argv, env, log=workdir / "redis.log")
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while child.alive() and time.monotonic() < deadline and not stop.requested.is_set():
                try:
                    client.ping()
                    return child, url
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        stop_all([child], 5)
        if stop.requested.is_set():
            break
    raise StandaloneError(f"pagebatch standalone: redis-server did not start (see {workdir / 'redis.log'})")


def _api_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _worker_ready(redis_url: str, worker: Child) -> bool:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=1)
    try:
        return any(worker_id.endswith(f"-{worker.pid}") for worker_id in live_workers(client))
    except redis.RedisError:
        return False
    finally:
        client.close()


def run_standalone(settings: Settings, plan: StandalonePlan, env: dict[str, str]) -> int:
    """Runs until a signal (0) or until a child dies (1). ``env`` is the environment for the children."""
    configure_logging(settings.log_level, settings.log_format)
    own_redis = "redis_url" not in settings.model_fields_set
    binary = find_redis_server() if own_redis else ""
    stop = _Stop()
    previous = stop.install()
    children: list[Child] = []
    redis_child: Child | None = None
    scratch: Path | None = None  # the embedded Redis' directory when nothing is to be kept
    env = dict(env)
    redis_url = settings.redis_url
    api_key = None
    try:
        if own_redis:
            if plan.redis_dir is None:
                scratch = workdir = Path(tempfile.mkdtemp(prefix="pagebatch-redis-"))
            else:
                workdir = plan.redis_dir
                workdir.mkdir(parents=True, exist_ok=True)
            redis_child, redis_url = start_redis(binary, workdir, plan.redis_dir is not None, env, stop)
            env["PAGEBATCH_REDIS_URL"] = redis_url
        if not settings.api_keys:
            api_key = "sk-local-" + secrets.token_urlsafe(18)
            env["PAGEBATCH_API_KEYS"] = f"{api_key}={LOCAL_TENANT}"
        children.append(spawn("api", _pagebatch("api", "--host", plan.host, "--port", str(plan.port)), env))
        children.append(spawn("worker", _pagebatch("worker", "--model", plan.model, *plan.worker_args), env))
        return _supervise(settings, plan, children, redis_url, own_redis, api_key, stop)
    finally:
        killed = stop_all(children, 0 if stop.forced.is_set() else plan.stop_timeout_s, stop.forced)
        if redis_child is not None:
            killed += stop_all([redis_child], 10, stop.forced)
        if killed:
            log.warning("killed after the grace period", processes=killed)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        log.info("standalone stopped")


def _supervise(settings: Settings, plan: StandalonePlan, children: list[Child], redis_url: str, own_redis: bool,
               api_key: str | None, stop: _Stop) -> int:
    host = "127.0.0.1" if plan.host in ("0.0.0.0", "::") else plan.host
    base = f"http://{host}:{plan.port}"
    ready = False
    while not stop.requested.wait(0.25):
        dead = [c for c in children if not c.alive()]
        if dead:
            log.error("a process exited; stopping everything", process=dead[0].name, exit_code=dead[0].proc.returncode)
            return 1
        if not ready and _api_ready(base) and _worker_ready(redis_url, children[1]):
            ready = True
            _announce(settings, plan, base, redis_url, own_redis, api_key)
    log.info("stopping")
    return 0


def _announce(settings: Settings, plan: StandalonePlan, base: str, redis_url: str, own_redis: bool,
              api_key: str | None) -> None:
    redis_note = ("own, " + (f"AOF in {plan.redis_dir}" if plan.redis_dir else "not persisted")) if own_redis else "given"
    storage = settings.storage if settings.storage.startswith("s3://") else str(Path(settings.storage).resolve())
    lines = [
        "pagebatch standalone is ready",
        f"  API        {base}/v1   (OpenAI Batch API; {base}/healthz, {base}/metrics)",
        f"  API key    {api_key}   (tenant {LOCAL_TENANT})" if api_key else "  API keys   from PAGEBATCH_API_KEYS",
        f"  model      {plan.model_name}   ({plan.model})",
        f"  Redis      {redis_url}   ({redis_note})",
        f"  storage    {storage}",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
    log.info("standalone ready", url=f"{base}/v1", redis=redis_url, storage=storage)
