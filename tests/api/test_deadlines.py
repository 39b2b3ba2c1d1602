"""Expiry and cancel hold without a worker for the batch's model, and without any worker at all."""
import time

import redis

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status

GHOST = "ghost-model"


def submit_window(client, lines, window):
    file = upload(client, jsonl(lines))
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window=window)  # served once, its workers gone now: its shards wait with nobody to run them


def test_a_batch_whose_model_has_no_worker_expires_and_a_cancel_ends(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="3")
    stack.start_worker()  # serves the tiny model and runs prepare; nothing serves the ghost model
    redis.Redis.from_url(stack.redis.url).sadd("pb:models", GHOST)
    client = stack.client("d")
    lines = [chat_line(f"g{i}", GHOST, f"text {i}") for i in range(5)] + [chat_line("bad", "nope")]

    overdue = submit_window(client, lines, "5s")
    cancelled = submit(client, lines)
    wait_status(client, cancelled.id, {"in_progress"}, timeout=30)
    assert client.batches.cancel(cancelled.id).status == "cancelling"

    cancelled = wait_status(client, cancelled.id, timeout=60, logs=stack.logs)
    assert cancelled.status == "cancelled"
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 6)
    codes = sorted(e["error"]["code"] if e["error"] else e["response"]["body"]["error"]["code"]
                   for e in read_jsonl(client, cancelled.error_file_id))
    assert codes == ["batch_cancelled"] * 5 + ["model_not_found"]

    overdue = wait_status(client, overdue.id, timeout=60, logs=stack.logs)
    assert overdue.status == "expired" and overdue.expired_at >= overdue.expires_at
    errors = read_jsonl(client, overdue.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == sorted(line["custom_id"] for line in lines)
    assert {e["error"]["code"] for e in errors if e["error"]} == {"batch_expired"}
    assert len(read_jsonl(client, overdue.to_dict()["usage_file_id"])) == 6


def test_with_no_worker_at_all_the_api_expires_a_batch_nobody_prepared(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="3")
    redis.Redis.from_url(stack.redis.url).sadd("pb:models", GHOST)
    client = stack.client("d")
    batch = submit_window(client, [chat_line("x", GHOST)], "3s")
    time.sleep(1)
    assert client.batches.retrieve(batch.id).status == "validating"
    batch = wait_status(client, batch.id, timeout=60, logs=stack.logs)
    assert batch.status == "expired" and batch.output_file_id is None
