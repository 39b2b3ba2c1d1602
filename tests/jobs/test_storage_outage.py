"""S3 cut mid-batch (a TCP proxy in front of the S3 server): every line completes, none fails, none twice."""
import time
from collections import Counter

import httpx
import pytest

from tests.batch_helpers import chat_line, read_jsonl, submit
from tests.jobs.test_faults import poll
from tests.tcp_proxy import TcpProxy

LINES = 200


@pytest.fixture
def proxied_stack(make_stack, moto_s3):
    proxy = TcpProxy(int(moto_s3.endpoint.rsplit(":", 1)[1]))
    stack = make_stack(AWS_ENDPOINT_URL_S3=proxy.url, PAGEBATCH_SHARD_SIZE="20")
    stack.start_worker()
    yield stack, proxy
    proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize("outage_s", [8, 40])
def test_an_s3_outage_mid_batch_delays_the_batch_and_fails_no_line(proxied_stack, outage_s):
    stack, proxy = proxied_stack
    client = stack.client("a")
    lines = [chat_line(f"s-{i}", stack.model, f"doc {i}", max_tokens=12, ignore_eos=True) for i in range(LINES)]
    batch = submit(client, lines)
    poll(client, batch.id, lambda b: b.request_counts.completed >= LINES // 4, what="a quarter of the batch")

    proxy.cut()
    cut_at = time.monotonic()
    answer = httpx.get(f"{stack.base_url}/files/{batch.input_file_id}", headers={"Authorization": "Bearer key-a"},
                       timeout=30)
    assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
    assert answer.json()["error"]["type"] == "server_error"
    time.sleep(max(0.0, outage_s - (time.monotonic() - cut_at)))
    proxy.restore()
    restored_at = time.monotonic()

    try:
        batch = poll(client, batch.id, lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
                     timeout=240, what="the batch to finish after the outage")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{stack.logs()}") from None
    print(f"S3 cut {outage_s}s at a quarter of {LINES} lines: {batch.status} "
          f"{batch.request_counts.completed}/{LINES} completed, {batch.request_counts.failed} failed, "
          f"finished {time.monotonic() - restored_at:.1f}s after S3 came back")
    assert batch.status == "completed", stack.logs()
    lapsed = [w.log.name for w in stack.workers if "made no progress" in w.log.read_text(errors="replace")]
    assert not lapsed, f"waiting out an outage is progress, yet a shard's lease lapsed in {lapsed}"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0), stack.logs()
    output = read_jsonl(client, batch.output_file_id)
    assert Counter(o["custom_id"] for o in output) == Counter(line["custom_id"] for line in lines)
    assert batch.error_file_id is None
    usage = read_jsonl(client, batch.usage_file_id)
    assert len(usage) == LINES
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage) == 12 * LINES
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
