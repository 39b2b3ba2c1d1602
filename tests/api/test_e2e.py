"""The happy path on the real stack (redis-server, moto S3, `pagebatch api`, `pagebatch worker`), via the openai SDK."""
from collections import Counter

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.batch_helpers import chat_line, completion_line, read_jsonl, submit, wait_status


def usage_sums(usage_log):
    return (sum(u["prompt_tokens"] for u in usage_log), sum(u["cached_tokens"] for u in usage_log),
            sum(u["completion_tokens"] for u in usage_log))


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
def test_batch_runs_to_completion_and_the_numbers_agree(stack, endpoint):
    client = stack.client("a")
    make = chat_line if endpoint == "/v1/chat/completions" else completion_line
    # A shared prefix, so the prefix cache has something to report.
    shared = "The quarterly report covers revenue, costs, hiring and the roadmap for next year. " * 3
    lines = [make(f"req-{i}", stack.model, shared + f"item {i}", seed=i, max_tokens=4 + i % 5, logprobs=True)
             if endpoint == "/v1/chat/completions" else
             make(f"req-{i}", stack.model, shared + f"item {i}", seed=i, max_tokens=4 + i % 5, logprobs=2)
             for i in range(30)]
    batch = submit(client, lines, endpoint=endpoint, metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}

    batch = wait_status(client, batch.id, logs=stack.logs)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 30 and batch.request_counts.completed == 30
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.model == stack.model
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at

    output = read_jsonl(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(30))
    by_id = {o["custom_id"]: o for o in output}
    for i in range(30):
        response = by_id[f"req-{i}"]["response"]
        assert response["status_code"] == 200
        parsed = (ChatCompletion if endpoint == "/v1/chat/completions" else Completion).model_validate(response["body"])
        assert parsed.usage.completion_tokens <= 4 + i % 5
        assert parsed.choices[0].logprobs is not None

    usage_log = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage_log) == 30
    prompt, cached, completion = usage_sums(usage_log)
    assert batch.usage.input_tokens == prompt > 0
    assert batch.usage.input_tokens_details.cached_tokens == cached > 0
    assert batch.usage.output_tokens == completion > 0
    assert batch.usage.total_tokens == prompt + completion
    record = usage_log[0]
    assert record["batch_id"] == batch.id and record["tenant"] == "tenant-a" and record["model"] == stack.model
    assert record["worker"].startswith(stack.model + "@")
    assert record["finish_reason"] in ("stop", "length")
    assert record["total_time"] >= record["time_to_first_token"] >= record["queue_time"] >= 0
    # the usage log and the responses tell the same story, request by request
    for u in usage_log:
        body_usage = by_id[u["custom_id"]]["response"]["body"]["usage"]
        assert body_usage["prompt_tokens"] == u["prompt_tokens"]
        assert body_usage["completion_tokens"] == u["completion_tokens"]


def test_batches_keep_running_side_by_side(stack):
    client = stack.client("b")
    batches = [submit(client, [chat_line(f"{n}-{i}", stack.model, f"doc {i}") for i in range(12)]) for n in range(3)]
    finished = [wait_status(client, b.id, logs=stack.logs) for b in batches]
    assert [b.status for b in finished] == ["completed"] * 3
    for n, batch in enumerate(finished):
        ids = Counter(o["custom_id"] for o in read_jsonl(client, batch.output_file_id))
        assert ids == Counter(f"{n}-{i}" for i in range(12))


def test_health(stack):
    import httpx

    health = httpx.get(f"http://127.0.0.1:{stack.api_port}/healthz").json()
    assert health["status"] == "ok" and health["redis"] == "ok" and health["storage"] == "ok"
    assert stack.model in health["workers"].values()
