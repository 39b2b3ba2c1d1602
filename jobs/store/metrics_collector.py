"""The service-wide Prometheus metrics, read from Redis at scrape time (queues, batches, engines, latencies).

Reading at scrape time means any API replica answers the same. Workers put the numbers there
(jobs/store/metrics.py); the API's ``/metrics`` registers this collector.
"""
from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from pagebatch.jobs.store import metrics as store
from pagebatch.jobs.store.quotas import TenantQuotas
from pagebatch.jobs.store.registry import known_models

# EngineStats field -> (metric name, help); one series per worker.
_ENGINE_GAUGES = {
    "num_running": ("pagebatch_engine_requests_running", "Requests the engine is running now"),
    "num_waiting": ("pagebatch_engine_requests_waiting", "Requests waiting in the engine's scheduler"),
    "kv_blocks_total": ("pagebatch_engine_kv_blocks_total", "KV cache blocks in the engine's pool"),
    "kv_blocks_used": ("pagebatch_engine_kv_blocks_used", "KV cache blocks held by running requests"),
    "kv_blocks_cached": ("pagebatch_engine_kv_blocks_cached", "Free KV cache blocks that still hold a reusable prefix"),
    "kv_blocks_free": ("pagebatch_engine_kv_blocks_free", "KV cache blocks free and holding nothing reusable"),
    "prompt_tokens_per_s": ("pagebatch_engine_prompt_tokens_per_second", "Prompt tokens processed per second (recent window)"),
    "generation_tokens_per_s": ("pagebatch_engine_generation_tokens_per_second", "Tokens generated per second (recent window)"),
}
_ENGINE_COUNTERS = {
    "prompt_tokens_total": ("pagebatch_engine_prompt_tokens", "Prompt tokens processed since the worker started"),
    "generation_tokens_total": ("pagebatch_engine_generation_tokens", "Tokens generated since the worker started"),
    "cached_prompt_tokens_total": ("pagebatch_engine_cached_prompt_tokens", "Prompt tokens served from the prefix cache"),
    "num_preemptions": ("pagebatch_engine_preemptions", "Requests preempted (recomputed) for lack of KV blocks"),
    "busy_seconds_total": ("pagebatch_engine_busy_seconds", "Seconds the engine spent stepping since the worker started"),
}
_LATENCY_HELP = {
    "queue_time": "Seconds a request waited in the engine before it was first scheduled",
    "time_to_first_token": "Seconds from a request's arrival in the engine to its first token",
    "total_time": "Seconds from a request's arrival in the engine to its end",
}


class ServiceCollector:
    """Collects the service-wide metrics from Redis on each scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.quotas = TenantQuotas(client)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pagebatch_state_store_up", "Whether Redis answered this scrape")
        try:
            families = list(self._families())
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        models = sorted(known_models(self.client))
        depth = GaugeMetricFamily("pagebatch_queue_depth", "Shard tasks waiting in the model's queue", labels=["model"])
        for model, n in store.queue_depths(self.client, models).items():
            depth.add_metric([model], n)
        yield depth

        counts = store.read_batch_counts(self.client)
        active = GaugeMetricFamily("pagebatch_batches", "Batches not finished, by status", labels=["status"])
        for status, n in counts.active.items():
            active.add_metric([status], n)
        yield active
        finished = CounterMetricFamily("pagebatch_batches_finished", "Batches finished, by final status",
                                       labels=["status"])
        for status, n in counts.finished.items():
            finished.add_metric([status], n)
        yield finished

        yield from self._engines()
        yield from self._latencies(models)
        yield from self._tenant_usage()

    def _tenant_usage(self) -> Iterator[Metric]:
        """What each tenant holds of its quotas (counts only: no file, batch or request names)."""
        gauges = {name: GaugeMetricFamily(f"pagebatch_tenant_{name}", help_text, labels=["tenant"])
                  for name, help_text in (("bytes_stored", "Bytes the tenant stores in files"),
                                          ("files_stored", "Files the tenant stores"),
                                          ("batches_in_flight", "The tenant's batches not finished"))}
        lines = GaugeMetricFamily("pagebatch_tenant_lines_enqueued", "Requests the tenant has enqueued, per model",
                                  labels=["tenant", "model"])
        tokens = GaugeMetricFamily("pagebatch_tenant_tokens_enqueued",
                                   "Tokens the tenant has enqueued (prompt estimate + n x max_tokens), per model",
                                   labels=["tenant", "model"])
        for tenant in self.quotas.tenants():
            usage = self.quotas.usage(tenant)
            gauges["bytes_stored"].add_metric([tenant], usage.bytes)
            gauges["files_stored"].add_metric([tenant], usage.files)
            gauges["batches_in_flight"].add_metric([tenant], usage.batches_in_flight)
            for model, (n_lines, n_tokens) in sorted(usage.enqueued.items()):
                lines.add_metric([tenant, model], n_lines)
                tokens.add_metric([tenant, model], n_tokens)
        yield from gauges.values()
        yield lines
        yield tokens

    def _engines(self) -> Iterator[Metric]:
        snapshots = store.read_snapshots(self.client)
        workers = GaugeMetricFamily("pagebatch_workers", "Workers publishing engine stats", labels=["model"])
        per_model: dict[str, int] = {}
        for snap in snapshots:
            per_model[snap.model] = per_model.get(snap.model, 0) + 1
        for model, n in sorted(per_model.items()):
            workers.add_metric([model], n)
        yield workers
        for table, family in ((_ENGINE_GAUGES, GaugeMetricFamily), (_ENGINE_COUNTERS, CounterMetricFamily)):
            for field_name, (name, help_text) in table.items():
                metric = family(name, help_text, labels=["model", "worker"])
                for snap in snapshots:
                    if field_name in snap.stats:
                        metric.add_metric([snap.model, snap.worker], float(snap.stats[field_name]))
                yield metric
        yield from self._serving_paths(snapshots)

    def _serving_paths(self, snapshots: list[store.WorkerSnapshot]) -> Iterator[Metric]:
        kernel = GaugeMetricFamily("pagebatch_engine_kernel", "What serves each hot-path op (1 per op): triton, cpu, "
                                   "torch, or torch-fallback (its kernel failed the start-up self-check)",
                                   labels=["model", "worker", "op", "implementation"])
        graphs = GaugeMetricFamily("pagebatch_engine_cuda_graphs", "How decode steps run (1 for the state): captured "
                                   "(CUDA graphs), eager-fallback (capture or its check failed), padded-eager, off",
                                   labels=["model", "worker", "state"])
        fallbacks = GaugeMetricFamily("pagebatch_engine_kernel_fallbacks",
                                      "Kernels replaced by their torch reference after failing the start-up self-check",
                                      labels=["model", "worker"])
        for snap in snapshots:
            path = snap.serving
            if not path:
                continue
            for op, implementation in sorted(path.get("ops", {}).items()):
                kernel.add_metric([snap.model, snap.worker, op, implementation], 1)
            graphs.add_metric([snap.model, snap.worker, str(path.get("cuda_graphs", "off"))], 1)
            fallbacks.add_metric([snap.model, snap.worker], len(path.get("fallbacks", [])))
        yield from (kernel, graphs, fallbacks)

    def _latencies(self, models: list[str]) -> Iterator[Metric]:
        latencies = {model: store.read_latency(self.client, model) for model in models}
        for kind in store.LATENCY_KINDS:
            metric = HistogramMetricFamily(f"pagebatch_request_{kind}_seconds", _LATENCY_HELP[kind], labels=["model"])
            for model, latency in latencies.items():
                hist = latency.histograms[kind]
                metric.add_metric([model], [(floatToGoString(b), n) for b, n in hist.cumulative], hist.total)
            yield metric
        finished = CounterMetricFamily("pagebatch_requests_finished", "Requests the engines finished, by reason",
                                       labels=["model", "finish_reason"])
        for model, latency in latencies.items():
            for reason, n in sorted(latency.finished.items()):
                finished.add_metric([model, reason], n)
        yield finished
