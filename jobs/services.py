"""The process-wide handles every part of the service uses: settings, storage, Redis, task sender."""
from __future__ import annotations

from dataclasses import dataclass

import redis

from jobs.celery_app import Dispatcher, create_celery
from jobs.files import FileStore
from jobs.settings import Settings
from jobs.state import BatchState, connect
from jobs.storage import Storage, open_storage


@dataclass
class Services:
    settings: Settings
    storage: Storage
    redis: redis.Redis
    state: BatchState
    files: FileStore
    dispatch: Dispatcher

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        storage = open_storage(settings.storage)
        client = connect(settings.redis_url)
        return cls(
            settings=settings,
            storage=storage,
            redis=client,
            state=BatchState(client, storage, settings.state_ttl_s),
            files=FileStore(storage),
            dispatch=Dispatcher(create_celery(settings)),
        )
