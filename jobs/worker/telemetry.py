"""A worker's side of ``/metrics``: it observes its engine and publishes what it sees to Redis."""
from __future__ import annotations

import concurrent.futures as cf
import contextvars
import threading
from dataclasses import asdict, is_dataclass
from typing import Any

import redis

from pagebatch.jobs.engine_host import EngineHandle
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.store.metrics import LatencyBuffer, publish_snapshot, remove_snapshot

log = get_logger(__name__)


class ObservedLoop:
    """An ``EngineLoop`` whose finished requests are timed into ``latency`` and logged.

    Futures resolve on the engine's thread, so the caller's logging context (batch id, shard) is
    captured at submit time and restored for the log line.
    """

    def __init__(self, loop: EngineHandle, latency: LatencyBuffer) -> None:
        self._loop = loop
        self._latency = latency
        self.fill = CompletionFill()

    def submit(self, prompt: Any, params: Any = None, request_id: str | None = None, fairness_key: str = ""
               ) -> cf.Future:
        future = self._loop.submit(prompt, params, request_id=request_id, fairness_key=fairness_key)
        context = contextvars.copy_context()
        future.add_done_callback(lambda done: context.run(self._finished, done))
        future.add_done_callback(lambda done: self.fill.observe(params, done))
        return future

    def stats(self) -> dict[str, Any]:
        """The engine's stats, and how much of the tokens they were allowed the finished requests generated."""
        stats = self._loop.stats()
        return {**(asdict(stats) if is_dataclass(stats) else dict(stats)), **self.fill.totals()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def _finished(self, future: cf.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        out = future.result()
        metrics = out.metrics
        latencies: dict[str, float | None] = {}
        # Aborted and rejected requests are counted, but their times would only blur the histograms.
        if metrics is not None and out.finish_reason in ("stop", "length"):
            latencies = {"queue_time": metrics.queue_time, "time_to_first_token": metrics.time_to_first_token,
                         "total_time": metrics.total_time}
        self._latency.observe(out.finish_reason or "unknown", latencies)
        log.debug("request finished", request_id=out.request_id, finish_reason=out.finish_reason,
                  prompt_tokens=out.num_prompt_tokens, cached_tokens=out.num_cached_tokens,
                  completion_tokens=len(out.token_ids), **{k: v for k, v in latencies.items() if v is not None})


class CompletionFill:
    """Tokens generated against tokens allowed (max_tokens) over the generation requests that finished: how much of
    the upper bound real answers use, which estimates scale their completion tokens by (jobs/batch/estimate.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generated = self.allowed = 0

    def observe(self, params: Any, future: cf.Future) -> None:
        max_tokens = getattr(params, "max_tokens", None)
        if not max_tokens or getattr(params, "choices", None) or future.cancelled() or future.exception():
            return  # embeddings, labels (their bound is exact) and failures say nothing about answer lengths
        out = future.result()
        if out.finish_reason in ("stop", "length"):
            with self._lock:
                self.generated += len(out.token_ids)
                self.allowed += max_tokens

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {"completion_tokens_generated": self.generated, "completion_tokens_allowed": self.allowed}


class TelemetryPublisher:
    """This worker's engine stats and serving path (with a TTL) and its new latency counts, published each period."""

    def __init__(self, client: redis.Redis, loop: EngineHandle, latency: LatencyBuffer, worker: str, model: str,
                 interval_s: float = 2.0) -> None:
        self.client, self.loop, self.latency = client, loop, latency
        self.worker, self.model = worker, model
        # A few missed periods before the snapshot expires: a dead worker's gauges vanish quickly.
        self.ttl_s = max(5, round(3 * interval_s))
        self._path: dict | None = None

    def publish(self) -> None:
        publish_snapshot(self.client, self.worker, self.model, self.loop.stats(), self.ttl_s, self._serving_path())
        self.latency.flush(self.client)

    def _serving_path(self) -> dict:
        if self._path is None:  # fixed once the engine is built
            self._path = self.loop.serving_path()
        return self._path

    def close(self) -> None:
        try:
            self.latency.flush(self.client)
            remove_snapshot(self.client, self.worker)
        except redis.RedisError:
            pass
