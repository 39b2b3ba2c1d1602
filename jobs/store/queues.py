"""The Celery application and the one place tasks are sent from.

JSON only, late acks, one queue per model; running tasks renew their broker lease (jobs/worker/lease.py),
so the visibility timeout bounds how fast a dead worker's tasks come back, not how long a task may run.
"""
from __future__ import annotations

from collections.abc import Iterable

import redis
from celery import Celery

from pagebatch.jobs.batch.shard_ref import SHARD_HEADER, ShardRef
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store.fair_queue import FairQueue, ShardLoad
from pagebatch.jobs.store.keys import CONTROL_QUEUE, UNACKED_INDEX, model_queue

PREPARE_TASK = "pagebatch.prepare"
SHARD_TASK = "pagebatch.run_shard"
FINALIZE_TASK = "pagebatch.finalize"


def create_celery(settings: Settings) -> Celery:
    app = Celery("pagebatch", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=settings.task_events,  # for Flower
        task_send_sent_event=settings.task_events,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # After a broker restart, Celery would lower the prefetch count by the tasks still running and raise
        # it as they are acked; acks of messages from the old connection can fail, leaving a consumer that never
        # fetches again. Shard tasks ride out the outage and are acked late, so keep the prefetch as it was.
        worker_enable_prefetch_count_reduction=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_index_key": UNACKED_INDEX,
            # Look for expired unacked messages every few seconds instead of kombu's ~100 s default.
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        },
    )
    return app


class Dispatcher:
    """Sends the pipeline's tasks by name, so senders (the API) need not import the task code.

    Shard tasks go through the fair queue (jobs/store/fair_queue.py), which releases them to the
    model's queue round-robin between tenants.
    """

    def __init__(self, app: Celery, client: redis.Redis, settings: Settings) -> None:
        self.app = app
        self.fair = FairQueue(client, self._send_shard, settings.dispatch_window, settings.tenant_max_lines_in_flight)

    def prepare(self, batch_id: str, tenant: str) -> None:
        self.app.send_task(PREPARE_TASK, args=[batch_id, tenant], queue=CONTROL_QUEUE)

    def shards(self, model: str, shards: Iterable[tuple[ShardRef, ShardLoad]]) -> None:
        """Queue shards of one batch and model for fair release; those waiting or in flight are skipped."""
        self.fair.enqueue(model, shards)

    def shard_done(self, ref: ShardRef, model: str) -> None:
        self.fair.done(model, ref)

    def _send_shard(self, ref: ShardRef, model: str) -> None:
        self.app.send_task(SHARD_TASK, args=ref.to_task_args(), queue=model_queue(model),
                           headers={SHARD_HEADER: ref.token})

    def finalize(self, batch_id: str, tenant: str) -> None:
        self.app.send_task(FINALIZE_TASK, args=[batch_id, tenant], queue=CONTROL_QUEUE)
