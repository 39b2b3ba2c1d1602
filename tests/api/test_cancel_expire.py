"""Cancel and completion-window expiry: in-flight requests are aborted in the engine within seconds;
finished results are kept."""
import time
from collections import Counter

from tests.batch_helpers import chat_line, jsonl, read_jsonl, upload, wait_status

LONG = dict(max_tokens=3500, ignore_eos=True)  # runs for many seconds on the tiny model


def mixed_lines(model, short=16, long=24):
    lines = [chat_line(f"short-{i}", model, f"quick {i}", max_tokens=2) for i in range(short)]
    lines += [chat_line(f"long-{i}", model, f"ramble {i}", **LONG) for i in range(long)]
    return lines


def check_split(client, batch, short=16, long=24, code="batch_cancelled"):
    output = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert Counter(o["custom_id"] for o in output) == Counter(f"short-{i}" for i in range(short))
    assert Counter(e["custom_id"] for e in errors) == Counter(f"long-{i}" for i in range(long))
    assert {e["error"]["code"] for e in errors} == {code} and all(e["response"] is None for e in errors)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (short, long)
    usage_log = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage_log) == short + long
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage_log)
    # the aborted requests had been generating: their tokens so far are accounted, and far below max_tokens
    aborted = [u for u in usage_log if u["finish_reason"] == "abort"]
    assert aborted and all(0 < u["completion_tokens"] < LONG["max_tokens"] for u in aborted)


def test_cancel_aborts_in_flight_requests_and_keeps_finished_ones(stack):
    client = stack.client("h")
    batch = client.batches.create(input_file_id=upload(client, jsonl(mixed_lines(stack.model))).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while True:  # polling shows progress while the batch runs
        seen = client.batches.retrieve(batch.id)
        if seen.status == "in_progress" and seen.request_counts.completed == 16:
            break
        assert seen.status in ("validating", "in_progress") and time.monotonic() < deadline, seen
        time.sleep(0.1)

    cancelled_at = time.monotonic()
    assert client.batches.cancel(batch.id).status == "cancelling"
    batch = wait_status(client, batch.id, timeout=30, logs=stack.logs)
    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    assert time.monotonic() - cancelled_at < 10
    check_split(client, batch)


def test_expiry_aborts_like_cancel_and_marks_the_batch_expired(stack):
    client = stack.client("h")
    file = upload(client, jsonl(mixed_lines(stack.model)))
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="5s")
    batch = wait_status(client, batch.id, timeout=30, logs=stack.logs)
    assert batch.status == "expired" and batch.expired_at
    assert batch.expired_at - batch.created_at < 12
    check_split(client, batch, code="batch_expired")
