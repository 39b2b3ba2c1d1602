"""No tenant costs another anything, on one real stack: quotas refuse a tenant's excess (and store nothing of
it), a receiver that drips its answer delays only its own webhooks, and a tenant flooding the engine with
n=128 lines does not hold another tenant's one-line batch behind it."""
from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from tests.batch_helpers import chat_line, jsonl, submit, upload, wait_status
from tests.jobs.test_webhooks import SECRET, Receiver
from tests.service_fixtures import RedisServer, Stack, stack_env, wait_for

QUOTAS = {"tenant-o": {"bytes": 60_000, "files": 4, "batches_in_flight": 1, "lines_enqueued": 6,
                       "tokens_enqueued": 3_000}}


class DrippingReceiver:
    """An HTTP endpoint that reads a request, then answers one byte every ``every_s`` seconds for a minute."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.connections = 0
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                receiver.connections += 1
                self.request.recv(65536)
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2:
                        self.request.sendall(bytes([byte]))
                        time.sleep(every_s)
                except OSError:
                    pass  # the sender gave up on us

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[DrippingReceiver, Receiver]]:
    dripping = DrippingReceiver()
    with Receiver(lambda request: 200) as prompt:
        yield dripping, prompt
    dripping.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, moto_s3, tiny_model, receivers) -> Iterator[Stack]:
    dripping, prompt = receivers
    root = tmp_path_factory.mktemp("isolation")
    server = RedisServer(root / "redis").start()
    env = stack_env(server, moto_s3, moto_s3.new_bucket(),
                    PAGEBATCH_TENANT_QUOTAS=json.dumps(QUOTAS),
                    PAGEBATCH_WEBHOOKS=f"tenant-g={dripping.url},tenant-h={prompt.url}",
                    PAGEBATCH_WEBHOOK_SECRETS=f"tenant-g={SECRET},tenant-h={SECRET}",
                    PAGEBATCH_WEBHOOK_INTERVAL_S="0.2")
    stack = Stack(server, env, tiny_model, root / "logs")
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()
        server.stop()


def refused(call, code: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    assert error.status_code == 429 and error.body["code"] == code and error.body["type"] == "insufficient_quota", error
    return error


def stored_keys(stack: Stack, tenant: str, part: str) -> list[str]:
    import boto3

    bucket, prefix = stack.env["PAGEBATCH_STORAGE"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/tenants/{tenant}/{part}")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_each_quota_refuses_its_tenant_and_nobody_else(shared):
    stack, q = shared, shared.client("o")
    other = submit(shared.client("v"), [chat_line(f"o{i}", shared.model) for i in range(3)])  # no quota

    error = refused(lambda: upload(q, b"x" * 100_000), "storage_quota_exceeded")
    assert "0 of 60,000 bytes" in error.message and "100,000 bytes" in error.message
    assert stored_keys(stack, "tenant-o", "") == [] and q.files.list().data == []  # nothing of it was written

    long_lines = upload(q, jsonl([chat_line(f"long-{i}", stack.model, max_tokens=600, ignore_eos=True)
                                  for i in range(2)]))
    running = q.batches.create(input_file_id=long_lines.id, endpoint="/v1/chat/completions", completion_window="24h")
    error = refused(lambda: q.batches.create(input_file_id=long_lines.id, endpoint="/v1/chat/completions",
                                             completion_window="24h"), "batch_quota_exceeded")
    assert "1 of 1 batches in flight" in error.message
    wait_for(lambda: q.batches.retrieve(running.id).status == "in_progress", 30, "the batch to start")
    usage = httpx.get(f"{stack.base_url}/quotas", headers={"Authorization": "Bearer key-o"}).json()
    assert usage["limits"] == QUOTAS["tenant-o"]
    assert usage["usage"]["batches_in_flight"] == 1 and usage["usage"]["files"] == 1
    [enqueued] = usage["usage"]["enqueued"]
    assert enqueued["model"] == stack.model and enqueued["lines"] == 2 and enqueued["tokens"] >= 1200
    metrics = httpx.get(stack.base_url.removesuffix("/v1") + "/metrics").text
    assert f'pagebatch_tenant_lines_enqueued{{model="{stack.model}",tenant="tenant-o"}} 2.0' in metrics
    assert 'pagebatch_tenant_batches_in_flight{tenant="tenant-o"} 1.0' in metrics
    running = wait_status(q, running.id, logs=stack.logs)
    assert running.status == "completed"  # its output and usage files count as stored: 3 files now

    too_many_lines = upload(q, jsonl([chat_line(f"l{i}", stack.model) for i in range(7)]))
    refused(lambda: upload(q, jsonl([chat_line("x", stack.model)])), "file_quota_exceeded")
    q.files.delete(running.output_file_id)  # frees a file's worth
    too_many_tokens = upload(q, jsonl([chat_line(f"t{i}", stack.model, max_tokens=1500) for i in range(2)]))

    for file, code in ((too_many_lines, "request_limit_exceeded"), (too_many_tokens, "token_limit_exceeded")):
        batch = q.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_status(q, batch.id, logs=stack.logs)
        assert batch.status == "failed" and batch.errors.data[0].code == code, batch
        assert f"for model {stack.model}" in batch.errors.data[0].message
        assert batch.output_file_id is None and stored_keys(stack, "tenant-o", f"work/{batch.id}/") == []

    other = wait_status(shared.client("v"), other.id, logs=stack.logs)
    assert other.status == "completed" and other.request_counts.completed == 3
    usage = httpx.get(f"{stack.base_url}/quotas", headers={"Authorization": "Bearer key-o"}).json()["usage"]
    assert (usage["files"], usage["batches_in_flight"], usage["enqueued"]) == (4, 0, [])


def test_a_receiver_that_drips_its_answer_delays_only_its_own_webhooks(shared, receivers):
    dripping, prompt = receivers
    g, h = shared.client("g"), shared.client("h")
    slow = [submit(g, [chat_line(f"g{i}", shared.model)]) for i in range(3)]
    for batch in slow:
        assert wait_status(g, batch.id, logs=shared.logs).status == "completed"
    wait_for(lambda: dripping.connections >= 1, 10, "the dripping receiver to be called")

    batch = wait_status(h, submit(h, [chat_line("h0", shared.model)]).id, logs=shared.logs)
    assert batch.status == "completed"
    [event] = wait_for(lambda: prompt.received(), 30, f"tenant-h's event\n{shared.logs()}")
    lag = event["at"] - batch.completed_at
    print(f"tenant-h's webhook arrived {lag:.2f}s after its batch completed (completed_at has 1 s resolution), "
          f"while tenant-g's receiver dripped ({dripping.connections} attempts so far)")
    assert json.loads(event["body"])["data"]["id"] == batch.id
    assert lag < 5


def test_a_tenant_flooding_the_engine_does_not_hold_back_another_tenants_batch(shared):
    """8 lines x n=128 x 3,000 tokens (1,024 sequences, 256 running) from one tenant; another tenant's one-line
    batch completes within 5 s of its creation."""
    r = redis.Redis.from_url(shared.redis.url, decode_responses=True)
    a, b = shared.client("a"), shared.client("b")
    flood = submit(a, [chat_line(f"f{i}", shared.model, f"flood {i}", n=128, max_tokens=3000, ignore_eos=True)
                       for i in range(8)])

    def running() -> int:
        stats = [json.loads(v)["stats"] for v in r.mget(list(r.scan_iter("pb:stats:*"))) if v]
        return sum(s["num_running"] for s in stats)

    wait_for(lambda: running() >= 200, 60, "the flood to fill the engine")
    started = time.monotonic()
    small = submit(b, [chat_line("small", shared.model, "one line", max_tokens=8)])
    small = wait_status(b, small.id, timeout=120, logs=shared.logs)
    took = time.monotonic() - started
    flood_now = a.batches.retrieve(flood.id)
    print(f"a one-line batch completed {took:.2f}s after its creation while another tenant ran {running()} "
          f"sequences ({flood_now.request_counts.completed}/8 flood lines done)")
    assert small.status == "completed" and small.request_counts.completed == 1
    assert flood_now.status == "in_progress" and flood_now.request_counts.completed == 0
    assert took < 5
    a.batches.cancel(flood.id)
    assert wait_status(a, flood.id, timeout=60, logs=shared.logs).status == "cancelled"
