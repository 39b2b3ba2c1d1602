"""Service metrics kept in Redis: what workers and batch transitions write, and what ``/metrics`` reads.

Workers own the engines, and the API may run on another machine, so everything the API exports
about them travels through Redis:

- a stats key per worker: a JSON snapshot of the worker's ``EngineLoop.stats()`` and its serving path
  (``EngineLoop.serving_path()``: which implementation serves each op, CUDA graphs or not), rewritten every few
  seconds with a TTL of a few periods, so a dead worker's gauges disappear on their own.
- a latency hash per model: per-request latency histograms (queue time, time to first token, total)
  as cumulative counters shared by all the workers of a model. Each worker adds its observations
  with HINCRBY, so the counts survive worker restarts and sum across machines with no coordination.
- the active batches (batch id -> status) and finished batches (status -> count), kept in the same
  transaction as each status change.

The key names are in jobs/store/keys.py.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import redis

from pagebatch.jobs.batch.lifecycle import ACTIVE, TERMINAL
from pagebatch.jobs.store import keys

# Batch requests wait in queues for minutes, so the buckets reach an hour.
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                      120.0, 300.0, 600.0, 1800.0, 3600.0)
LATENCY_KINDS: tuple[str, ...] = ("queue_time", "time_to_first_token", "total_time")
ACTIVE_STATUSES: tuple[str, ...] = tuple(str(s) for s in ACTIVE)
FINISHED_STATUSES: tuple[str, ...] = tuple(sorted(str(s) for s in TERMINAL))


# --- engine snapshots ---------------------------------------------------------------------------
@dataclass
class WorkerSnapshot:
    worker: str
    model: str
    stats: dict[str, float]
    published_at: float
    serving: dict[str, Any] = field(default_factory=dict)  # engine.serving_path.ServingPath.as_dict()


def publish_snapshot(client: redis.Redis, worker: str, model: str, stats: Any, ttl_s: int,
                     serving: dict[str, Any] | None = None) -> None:
    """``stats`` is an ``engine.EngineStats`` (or any dataclass/dict of numbers); ``serving`` its serving path."""
    values = asdict(stats) if is_dataclass(stats) else dict(stats)
    payload = {"worker": worker, "model": model, "stats": values, "published_at": time.time(), "serving": serving or {}}
    client.set(keys.named("stats", worker), json.dumps(payload), ex=max(1, ttl_s))


def remove_snapshot(client: redis.Redis, worker: str) -> None:
    client.delete(keys.named("stats", worker))


def read_snapshots(client: redis.Redis) -> list[WorkerSnapshot]:
    names = sorted(client.scan_iter(keys.STATS_PREFIX + "*", count=500))
    snapshots = []
    for raw in client.mget(names) if names else []:
        if raw is None:
            continue  # expired between SCAN and MGET
        data = json.loads(raw)
        snapshots.append(WorkerSnapshot(data["worker"], data["model"], data["stats"], data["published_at"],
                                        data.get("serving") or {}))
    return snapshots


# --- per-request latency --------------------------------------------------------------------------
def bucket_index(seconds: float) -> int:
    """Index of the first bucket whose upper bound holds ``seconds``; len(LATENCY_BUCKETS) is +Inf."""
    for i, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            return i
    return len(LATENCY_BUCKETS)


class LatencyBuffer:
    """Observations made in one worker, added to the model's shared counters in Redis in batches.

    Observing happens on the engine's thread; flushing on a publisher thread. A flush that fails
    keeps the counts for the next one.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sums: Counter[str] = Counter()

    def observe(self, finish_reason: str, latencies: dict[str, float | None]) -> None:
        with self._lock:
            self._counts[f"finished:{finish_reason}"] += 1
            for kind, seconds in latencies.items():
                if seconds is None or kind not in LATENCY_KINDS:
                    continue
                seconds = max(0.0, seconds)
                self._counts[f"{kind}:{bucket_index(seconds)}"] += 1
                self._counts[f"{kind}:count"] += 1
                self._sums[f"{kind}:sum"] += seconds

    def flush(self, client: redis.Redis) -> None:
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = Counter(), Counter()
        if not counts and not sums:
            return
        try:
            pipe = client.pipeline(transaction=True)
            key = keys.named("latency", self.model)
            for name, n in counts.items():
                pipe.hincrby(key, name, n)
            for name, total in sums.items():
                pipe.hincrbyfloat(key, name, total)
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._counts.update(counts)
                self._sums.update(sums)
            raise


@dataclass
class Histogram:
    cumulative: list[tuple[float, int]] = field(default_factory=list)  # (upper bound, count), inf last
    count: int = 0
    total: float = 0.0


@dataclass
class ModelLatency:
    histograms: dict[str, Histogram]
    finished: dict[str, int]  # finish_reason -> requests


def read_latency(client: redis.Redis, model: str) -> ModelLatency:
    raw: dict[str, str] = client.hgetall(keys.named("latency", model))
    histograms = {}
    for kind in LATENCY_KINDS:
        running, pairs = 0, []
        for i, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
            running += int(raw.get(f"{kind}:{i}", 0))
            pairs.append((bound, running))
        histograms[kind] = Histogram(pairs, running, float(raw.get(f"{kind}:sum", 0.0)))
    finished = {name.removeprefix("finished:"): int(v) for name, v in raw.items() if name.startswith("finished:")}
    return ModelLatency(histograms, finished)


# --- batches and queues ---------------------------------------------------------------------------
def record_status(pipe: redis.client.Pipeline, batch_id: str, old: str | None, new: str) -> None:
    """Queue the bookkeeping of a status change on ``pipe`` (inside the transaction that makes it)."""
    if old == new:
        return
    if new in FINISHED_STATUSES:
        pipe.hdel(keys.ACTIVE_BATCHES, batch_id)
        pipe.hincrby(keys.FINISHED_BATCHES, new, 1)
    else:
        pipe.hset(keys.ACTIVE_BATCHES, batch_id, new)


@dataclass
class BatchCounts:
    active: dict[str, int]
    finished: dict[str, int]


def read_batch_counts(client: redis.Redis) -> BatchCounts:
    pipe = client.pipeline(transaction=False)
    pipe.hvals(keys.ACTIVE_BATCHES)
    pipe.hgetall(keys.FINISHED_BATCHES)
    statuses, finished = pipe.execute()
    active = dict.fromkeys(ACTIVE_STATUSES, 0)
    active.update(Counter(statuses))
    done = dict.fromkeys(FINISHED_STATUSES, 0)
    done.update({status: int(n) for status, n in finished.items()})
    return BatchCounts(active, done)


def queue_depths(client: redis.Redis, models: list[str]) -> dict[str, int]:
    """Shards waiting for each model: in its fair queue, or in its Celery queue not yet delivered to a worker."""
    pipe = client.pipeline(transaction=False)
    for model in models:
        pipe.llen(keys.model_queue(model))
        pipe.scard(keys.fair(model, "waiting"))
    counts = [int(n) for n in pipe.execute()]
    return {model: counts[2 * i] + counts[2 * i + 1] for i, model in enumerate(models)}
