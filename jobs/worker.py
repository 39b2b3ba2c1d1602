"""A worker process: one long-lived engine, a Celery consumer running several shards at once on it."""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from celery import signals

from jobs.celery_app import CONTROL_QUEUE, create_celery, model_queue
from jobs.lease import LeaseKeeper
from jobs.logs import configure_logging, get_logger
from jobs.metrics import LatencyBuffer
from jobs.recovery import Sweeper
from jobs.services import Services
from jobs.settings import Settings
from jobs.state import register_model
from jobs.tasks import WorkerRuntime, register_tasks
from jobs.telemetry import ObservedLoop, TelemetryPublisher

log = get_logger(__name__)
HEARTBEAT_S = 5.0


@dataclass
class EngineOptions:
    """The EngineConfig fields the CLI exposes (the model path comes separately)."""

    dtype: str = "auto"
    device: str = "auto"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    num_kv_blocks: int | None = None
    enable_prefix_caching: bool = True


def served_name(model_path: str, name: str | None) -> str:
    return name or Path(model_path).resolve().name


def start_engine(model_path: str, options: EngineOptions) -> Any:
    from engine import EngineConfig, EngineLoop, LLMEngine

    return EngineLoop(LLMEngine(EngineConfig(model=model_path, **asdict(options))))


class ModelHeartbeat:
    """Advertises the served model (line validation checks it) and this worker, every few seconds."""

    def __init__(self, client: redis.Redis, model: str, worker_id: str) -> None:
        self.client, self.model, self.worker_id = client, model, worker_id
        self._stop = threading.Event()

    def beat(self) -> None:
        register_model(self.client, self.model, self.worker_id, ttl_s=int(HEARTBEAT_S * 3))

    def start(self) -> None:
        threading.Thread(target=self._run, name="pagebatch-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.delete(f"pb:worker:{self.worker_id}")
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except redis.RedisError as e:
                log.warning("heartbeat failed", error=repr(e))


def run_worker(settings: Settings, model_path: str, name: str | None, concurrency: int, options: EngineOptions) -> int:
    configure_logging(settings.log_level, settings.log_format)
    _quiet_celery_logging()
    model = served_name(model_path, name)
    worker_id = f"{model}@{socket.gethostname()}-{os.getpid()}"
    log.info("loading model", model=model, path=model_path)
    loop = start_engine(model_path, options)
    services = Services.from_settings(settings)
    app = create_celery(settings)
    latency = LatencyBuffer(model)
    register_tasks(app, WorkerRuntime(services, ObservedLoop(loop, latency), model, worker_id))
    telemetry = TelemetryPublisher(services.redis, loop, latency, worker_id, model, settings.stats_interval_s)
    lease = LeaseKeeper(services.redis, settings.lease_renew_interval_s).install()
    heartbeat = ModelHeartbeat(services.redis, model, worker_id)
    sweeper = Sweeper(services, settings.sweep_interval_s)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        heartbeat.beat()  # advertise only once the consumer is listening
        heartbeat.start()
        sweeper.start()
        telemetry.start()
        log.info("worker ready", model=model, worker=worker_id, queues=[model_queue(model), CONTROL_QUEUE])

    worker = app.Worker(
        hostname=worker_id, queues=[model_queue(model), CONTROL_QUEUE], pool="threads", concurrency=concurrency,
        without_gossip=True, without_mingle=True, without_heartbeat=not settings.task_events,
        loglevel=settings.log_level, optimization="fair", quiet=True,
    )
    try:
        worker.start()
    finally:
        heartbeat.stop()
        telemetry.stop()
        sweeper.stop()
        lease.stop()
        loop.close()
    return int(worker.exitcode or 0)


def _quiet_celery_logging() -> None:
    # Our handler (configure_logging) formats everything; Celery must not install its own.
    signals.setup_logging.connect(_keep_our_logging, weak=False)
    # Celery's "Task received" line comes from the consumer, before a task's ids are bound (tasks.py).
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


def _keep_our_logging(**_: Any) -> None:
    return None
