"""Which models are served and which workers are alive: advertised by workers with a TTL, read by the API."""
from __future__ import annotations

import redis

from pagebatch.jobs.store import keys


def register_model(client: redis.Redis, name: str, worker: str, ttl_s: int) -> None:
    pipe = client.pipeline()
    pipe.sadd(keys.MODELS, name)
    pipe.set(keys.named("worker", worker), name, ex=ttl_s)
    pipe.execute()


def known_models(client: redis.Redis) -> set[str]:
    return set(client.smembers(keys.MODELS))


def live_workers(client: redis.Redis) -> dict[str, str]:
    names = list(client.scan_iter(keys.WORKER_PREFIX + "*"))
    values = client.mget(names) if names else []
    return {k.removeprefix(keys.WORKER_PREFIX): v for k, v in zip(names, values, strict=True) if v is not None}


def forget_worker(client: redis.Redis, worker: str) -> None:
    client.delete(keys.named("worker", worker))
