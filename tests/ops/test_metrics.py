"""GET /metrics: Prometheus text that the reference parser reads, and whose numbers move when work is done."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status
from tests.service_fixtures import wait_for


def scrape(port: int) -> dict[str, list]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(metrics: dict[str, list], sample: str, **labels: str) -> float:
    """The sum of ``sample``'s series whose labels include ``labels`` (0 when none exist)."""
    return sum(s.value for samples in metrics.values() for s in samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_move_when_a_batch_is_done(stack):
    client = stack.client("m")
    model = stack.model
    before = scrape(stack.api_port)
    assert value(before, "pagebatch_state_store_up") == 1
    assert value(before, "pagebatch_workers", model=model) == 1
    assert value(before, "pagebatch_engine_kv_blocks_total", model=model) > 0
    # the worker's serving path: one implementation per op, decode steps eager on CPU, no kernel replaced
    assert value(before, "pagebatch_engine_kernel", model=model, op="paged_attention") == 1
    assert value(before, "pagebatch_engine_kernel", model=model, op="rms_norm", implementation="torch") == 1
    assert value(before, "pagebatch_engine_cuda_graphs", model=model, state="off") == 1
    assert value(before, "pagebatch_engine_kernel_fallbacks", model=model) == 0

    lines = [chat_line(f"m-{i}", model, f"describe item {i}", max_tokens=6) for i in range(12)]
    batch = submit(client, lines)
    during = scrape(stack.api_port)
    active = sum(value(during, "pagebatch_batches", status=s)
                 for s in ("validating", "in_progress", "finalizing"))
    assert active >= 1  # ours, until it finishes

    batch = wait_status(client, batch.id, logs=stack.logs)
    assert batch.status == "completed"
    generated = sum(u["completion_tokens"] for u in read_jsonl(client, batch.to_dict()["usage_file_id"]))
    latency = "pagebatch_request_total_time_seconds_count"
    # workers publish every couple of seconds
    after = wait_for(lambda: (m := scrape(stack.api_port)) and
                     value(m, latency, model=model) >= value(before, latency, model=model) + 12 and m, 15,
                     "the worker's latencies to reach /metrics")

    finished = "pagebatch_batches_finished_total"
    assert value(after, finished, status="completed") >= value(before, finished, status="completed") + 1
    assert value(after, "pagebatch_requests_finished_total", model=model) >= \
        value(before, "pagebatch_requests_finished_total", model=model) + 12
    tokens = "pagebatch_engine_generation_tokens_total"
    assert value(after, tokens, model=model) >= value(before, tokens, model=model) + generated > 0
    assert value(after, "pagebatch_queue_depth", model=model) == 0  # everything was taken

    for kind in ("queue_time", "time_to_first_token", "total_time"):
        name = f"pagebatch_request_{kind}_seconds"
        buckets = [s for s in after[name] if s.name == name + "_bucket" and s.labels["model"] == model]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
        assert counts[-1] == value(after, name + "_count", model=model) >= 12
        assert value(after, name + "_sum", model=model) > 0
    # a request's total time includes its time to first token
    assert value(after, "pagebatch_request_total_time_seconds_sum", model=model) >= \
        value(after, "pagebatch_request_time_to_first_token_seconds_sum", model=model)

    http = "pagebatch_api_request_duration_seconds_count"
    assert value(after, http, method="POST", route="/v1/batches") >= \
        value(before, http, method="POST", route="/v1/batches") + 1


def test_metrics_still_answer_when_redis_is_down(make_stack):
    stack = make_stack()
    assert value(scrape(stack.api_port), "pagebatch_state_store_up") == 1
    stack.redis.stop()
    down = scrape(stack.api_port)
    assert value(down, "pagebatch_state_store_up") == 0
    assert "pagebatch_api_requests" in down  # this process's own metrics are still there


def test_latencies_survive_a_failed_flush_and_count_once(redis_server):
    import pytest
    import redis

    from pagebatch.jobs.store.metrics import LATENCY_BUCKETS, LatencyBuffer, read_latency
    from tests.service_fixtures import free_port

    model = "flush-test-model"
    live = redis.Redis.from_url(redis_server.url, decode_responses=True)
    live.delete(f"pb:latency:{model}")
    buffer = LatencyBuffer(model)
    buffer.observe("stop", {"queue_time": 0.003, "time_to_first_token": 0.2, "total_time": 7.0})
    buffer.observe("length", {"queue_time": 0.02, "time_to_first_token": 0.3, "total_time": 9000.0})
    buffer.observe("abort", {})
    with pytest.raises(redis.RedisError):
        buffer.flush(redis.Redis(port=free_port(), socket_connect_timeout=0.5))  # nobody listens there
    buffer.flush(live)
    buffer.flush(live)  # nothing new: adds nothing

    latency = read_latency(live, model)
    total = latency.histograms["total_time"]
    assert total.count == 2 and total.total == pytest.approx(9007.0)
    cumulative = dict(total.cumulative)
    assert cumulative[5.0] == 0 and cumulative[10.0] == 1 and cumulative[LATENCY_BUCKETS[-1]] == 1
    assert cumulative[float("inf")] == 2  # 9000 s is past the last bucket
    assert dict(latency.histograms["queue_time"].cumulative)[0.01] == 1
    assert latency.finished == {"stop": 1, "length": 1, "abort": 1}


def test_a_kernel_fallback_reaches_metrics(redis_server, tmp_path, monkeypatch):
    """An engine whose compiled kernel failed its start-up self-check (the C++ decode attention, broken on purpose)
    publishes its serving path, and /metrics' collector names the op and its torch fallback."""
    import pytest
    import redis

    from pagebatch.engine.llm import LLM
    from pagebatch.engine.make_model import make_checkpoint
    from pagebatch.jobs.store import keys
    from pagebatch.jobs.store.metrics import publish_snapshot
    from pagebatch.jobs.store.metrics_collector import ServiceCollector
    from pagebatch.kernels import cpu_attention

    if not cpu_attention.available():
        pytest.skip("CPU attention kernel could not be built")
    correct = cpu_attention.paged_attention
    monkeypatch.setattr(cpu_attention, "paged_attention", lambda *a, **k: correct(*a, **k) * 2.0)
    llm = LLM(str(make_checkpoint(tmp_path / "m", arch="llama")), dtype="float32", device="cpu", kernels="cpu")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    worker = "fallback-worker"
    publish_snapshot(client, worker, "fallback-model", llm.engine.stats(), 30, llm.engine.serving_path().as_dict())
    try:
        families = {f.name: f.samples for f in ServiceCollector(client).collect()}
    finally:
        client.delete(keys.named("stats", worker))
    assert value(families, "pagebatch_engine_kernel", worker=worker, op="paged_attention",
                 implementation="torch-fallback") == 1
    assert value(families, "pagebatch_engine_kernel", worker=worker, op="rms_norm", implementation="torch") == 1
    assert value(families, "pagebatch_engine_kernel_fallbacks", worker=worker) == 1
    assert value(families, "pagebatch_engine_cuda_graphs", worker=worker, state="off") == 1
