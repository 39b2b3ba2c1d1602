"""A worker process: one long-lived engine, a Celery consumer running several shards at once on it."""
from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import redis
from celery import signals

from pagebatch.engine.native_memory import MMAP_THRESHOLD_BYTES, limit_arenas
from pagebatch.jobs.engine_host import EngineHandle, EngineOptions, served_name, start_engine
from pagebatch.jobs.logs import configure_logging, get_logger
from pagebatch.jobs.periodic import Periodic
from pagebatch.jobs.pipeline.estimates import EstimateServer
from pagebatch.jobs.pipeline.sweeper import sweep_once_per_interval
from pagebatch.jobs.pipeline.webhooks import WebhookSender
from pagebatch.jobs.services import Services
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store.keys import CONTROL_QUEUE, model_queue
from pagebatch.jobs.store.metrics import LatencyBuffer
from pagebatch.jobs.store.queues import create_celery
from pagebatch.jobs.store.registry import forget_worker, register_model, remember_model
from pagebatch.jobs.worker.lease import LeaseKeeper
from pagebatch.jobs.worker.tasks import WorkerRuntime, register_tasks
from pagebatch.jobs.worker.telemetry import ObservedLoop, TelemetryPublisher

log = get_logger(__name__)
HEARTBEAT_S = 5.0


class ModelHeartbeat:
    """Advertises the served model (line validation checks it) and this worker while its engine is alive.

    A worker whose engine thread died stops advertising and exits, so its shards go to another worker.
    """

    def __init__(self, services: Services, model: str, worker_id: str, loop: EngineHandle) -> None:
        self.services, self.client = services, services.redis
        self.model, self.worker_id, self.loop = model, worker_id, loop
        self.consumer: Any = None  # Celery's consumer, once it listens
        self._remembered = False

    def beat(self) -> None:
        connection = getattr(self.consumer, "connection", None)
        if self.consumer is not None and (connection is None or not connection.connected):
            return  # not consuming (the broker is away or reconnecting): let the advertisement lapse
        if not self.loop.is_alive():
            log.error("the engine thread died; stopping this worker so its shards go elsewhere",
                      error=repr(self.loop.fatal_error))
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not self._remembered:  # the durable copy a Redis that lost the models set is refilled from
            try:
                remember_model(self.services.storage, self.model)
                self._remembered = True
            except Exception as e:  # storage away: advertise anyway, write the copy on a later beat
                log.warning("could not record the served model in storage; retrying next heartbeat", error=repr(e))
        register_model(self.client, self.model, self.worker_id, ttl_s=int(HEARTBEAT_S * 3))

    def forget(self) -> None:
        try:
            forget_worker(self.client, self.worker_id)
        except redis.RedisError:
            pass


def run_worker(settings: Settings, model_path: str, name: str | None, concurrency: int, options: EngineOptions) -> int:
    limit_arenas(map_from=MMAP_THRESHOLD_BYTES)  # Celery's and the shard threads: engine/native_memory.py
    configure_logging(settings.log_level, settings.log_format)
    _quiet_celery_logging()
    model = served_name(model_path, name)
    worker_id = f"{model}@{socket.gethostname()}-{os.getpid()}"
    log.info("loading model", model=model, path=model_path)
    loop = start_engine(model_path, options, settings.kernels, settings.cache_dir, name,
                        initializer=(configure_logging, (settings.log_level, settings.log_format)))
    services = Services.from_settings(settings)
    app = create_celery(settings)
    latency = LatencyBuffer(model)
    observed = ObservedLoop(loop, latency)
    # A running shard whose engine does not move for the visibility timeout loses its lease: another worker runs it.
    lease = LeaseKeeper(services.redis, stall_s=settings.visibility_timeout).install()
    register_tasks(app, WorkerRuntime(services, observed, model, worker_id, lease))
    telemetry = TelemetryPublisher(services.redis, observed, latency, worker_id, model, settings.stats_interval_s)
    heartbeat = ModelHeartbeat(services, model, worker_id, loop)
    webhooks = WebhookSender(services)
    background = [
        Periodic("lease", settings.lease_renew_interval_s, lease.renew),
        Periodic("heartbeat", HEARTBEAT_S, heartbeat.beat, immediately=True),
        Periodic("sweep", settings.sweep_interval_s, lambda: sweep_once_per_interval(services, settings.sweep_interval_s)),
        Periodic("telemetry", settings.stats_interval_s, telemetry.publish, immediately=True),
        Periodic("webhooks", settings.webhook_interval_s, webhooks.pump),
        # estimates queued for this model, answered with this engine's own tokenizer and checks
        Periodic("estimates", 0.05, EstimateServer(services, observed, model).serve_once, immediately=True),
    ]

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        heartbeat.consumer = sender
        for thread in background:  # advertise only once the consumer is listening
            thread.start()
        log.info("worker ready", model=model, worker=worker_id, queues=[model_queue(model), CONTROL_QUEUE])

    worker = app.Worker(
        hostname=worker_id, queues=[model_queue(model), CONTROL_QUEUE], pool="threads", concurrency=concurrency,
        without_gossip=True, without_mingle=True, without_heartbeat=not settings.task_events,
        loglevel=settings.log_level, optimization="fair", quiet=True,
    )
    try:
        worker.start()
    finally:
        for thread in background:
            thread.stop()
        webhooks.close()
        heartbeat.forget()
        telemetry.close()
        loop.close()
    return int(worker.exitcode or 0)


def _quiet_celery_logging() -> None:
    # Our handler (configure_logging) formats everything; Celery must not install its own.
    signals.setup_logging.connect(_keep_our_logging, weak=False)
    # Celery's "Task received" line comes from the consumer, before a task's ids are bound (tasks.py).
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


def _keep_our_logging(**_: Any) -> None:
    return None
