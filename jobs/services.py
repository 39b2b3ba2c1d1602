"""The process-wide handles every part of the service uses: settings, storage, Redis, task sender."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store import layout
from pagebatch.jobs.store.files import FileStore
from pagebatch.jobs.store.queues import Dispatcher, create_celery
from pagebatch.jobs.store.quotas import TenantQuotas
from pagebatch.jobs.store.registry import live_workers
from pagebatch.jobs.store.state import BatchState, connect
from pagebatch.jobs.store.storage import Storage, open_storage


@dataclass
class Health:
    ok: bool
    checks: dict[str, Any]


@dataclass
class Services:
    settings: Settings
    storage: Storage
    redis: redis.Redis
    state: BatchState
    files: FileStore
    dispatch: Dispatcher
    quotas: TenantQuotas

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        storage = open_storage(settings.storage)
        client = connect(settings.redis_url)
        quotas = TenantQuotas(client)
        return cls(
            settings=settings,
            storage=storage,
            redis=client,
            state=BatchState(client, storage, settings.state_ttl_s, quotas),
            files=FileStore(storage, client, quotas),
            dispatch=Dispatcher(create_celery(settings), client, settings),
            quotas=quotas,
        )

    def health(self) -> Health:
        """Whether Redis and storage answer, and which workers are alive (for probes: never raises)."""
        checks: dict[str, Any] = {}
        try:
            self.redis.ping()
            checks["redis"] = "ok"
            checks["workers"] = live_workers(self.redis)
        except Exception as e:
            checks["redis"] = f"error: {type(e).__name__}"
        try:
            self.storage.list(layout.ACTIVE_PREFIX, limit=1)
            checks["storage"] = "ok"
        except Exception as e:
            checks["storage"] = f"error: {type(e).__name__}"
        return Health(checks["redis"] == "ok" and checks["storage"] == "ok", checks)
