"""Which models are served and which workers are alive: advertised by workers with a TTL, read by validation.

Workers add their model to a Redis set on every heartbeat; it is never removed ("known" means "served here
at some time"). The set has a durable copy in storage, written once per worker start, so a Redis that lost
its data (restarted without persistence) has every known model back the first time anything asks, instead
of after the next heartbeat of each worker: a batch created right after such a restart is validated against
the same models as before it.
"""
from __future__ import annotations

import hashlib
import json

import redis

from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.storage import NotFound, Storage


def register_model(client: redis.Redis, name: str, worker: str, ttl_s: int) -> None:
    pipe = client.pipeline()
    pipe.sadd(keys.MODELS, name)
    pipe.set(keys.named("worker", worker), name, ex=ttl_s)
    pipe.execute()


def remember_model(storage: Storage, name: str) -> None:
    """The durable copy: what a Redis that lost the set is refilled from."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    storage.put_bytes(layout.served_model(digest), json.dumps({"model": name}).encode())


def known_models(client: redis.Redis, storage: Storage | None = None) -> set[str]:
    """Every model a worker has served. With ``storage``, the set is refilled from the durable copy whenever
    Redis may have lost it (no ``intact`` marker: the refill sets one, and only the refill)."""
    if storage is None or client.exists(keys.MODELS_INTACT):
        return set(client.smembers(keys.MODELS))
    stored = set()
    for key in storage.list(layout.SERVED_MODELS_PREFIX):
        try:
            stored.add(json.loads(storage.get_bytes(key))["model"])
        except (NotFound, ValueError, KeyError, TypeError):
            continue
    if stored:
        pipe = client.pipeline()
        pipe.sadd(keys.MODELS, *stored)
        pipe.set(keys.MODELS_INTACT, "1")
        pipe.execute()
    return stored | set(client.smembers(keys.MODELS))


def live_workers(client: redis.Redis) -> dict[str, str]:
    names = list(client.scan_iter(keys.WORKER_PREFIX + "*"))
    values = client.mget(names) if names else []
    return {k.removeprefix(keys.WORKER_PREFIX): v for k, v in zip(names, values, strict=True) if v is not None}


def forget_worker(client: redis.Redis, worker: str) -> None:
    client.delete(keys.named("worker", worker))
