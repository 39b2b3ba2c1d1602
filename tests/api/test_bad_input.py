"""Bad lines fail alone (error file, counted as failed); bad files fail the batch with errors.data."""
import json

import openai
import pytest

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status
from tests.service_fixtures import STACK_LIMITS


def test_each_kind_of_bad_line_fails_alone(stack):
    client = stack.client("c")
    m = stack.model
    long_prompt = " ".join(["attention"] * 5000)  # longer than the tiny model's 4096-token context
    bad = {
        "bad-json": '{"custom_id": "x", "method": ',
        "no-custom-id": {"method": "POST", "url": "/v1/chat/completions", "body": chat_line("", m)["body"]},
        "dup": chat_line("good-0", m),
        "wrong-method": {**chat_line("wrong-method", m), "method": "GET"},
        "wrong-url": {**chat_line("wrong-url", m), "url": "/v1/completions"},
        "unknown-model": chat_line("unknown-model", "gpt-nonexistent"),
        "no-messages": {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": m}},
        "bad-param": chat_line("bad-param", m, temperature=-3),
        "too-long": chat_line("too-long", m, long_prompt),
    }
    good = [chat_line(f"good-{i}", m, f"fine {i}") for i in range(5)]
    batch = submit(client, [*good[:3], *bad.values(), *good[3:]])
    batch = wait_status(client, batch.id, logs=stack.logs)

    assert batch.status == "completed"
    assert batch.request_counts.total == 5 + len(bad)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, len(bad))
    assert sorted(o["custom_id"] for o in read_jsonl(client, batch.output_file_id)) == [f"good-{i}" for i in range(5)]

    errors = read_jsonl(client, batch.error_file_id)
    assert len(errors) == len(bad)
    codes = {}
    for e in errors:
        assert e["response"]["status_code"] == 400
        error = e["response"]["body"]["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        codes.setdefault(e["custom_id"], []).append(error["code"])
    assert codes == {
        None: ["invalid_json", "missing_custom_id"],
        "good-0": ["duplicate_custom_id"],
        "wrong-method": ["invalid_method"],
        "wrong-url": ["invalid_url"],
        "unknown-model": ["model_not_found"],
        "no-messages": ["missing_messages"],
        "bad-param": ["invalid_parameter"],
        "too-long": ["context_length_exceeded"],
    }

    usage_log = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage_log) == batch.request_counts.total  # one record per request, failed ones included
    failed_records = [u for u in usage_log if u["finish_reason"] == "error"]
    assert len(failed_records) == len(bad)
    assert all(u["prompt_tokens"] == u["completion_tokens"] == 0 for u in failed_records)


def _failed_with(client, content: bytes):
    batch = client.batches.create(input_file_id=upload(client, content).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_status(client, batch.id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.output_file_id is None
    return batch.errors.data


def test_an_empty_file_fails_the_batch(stack):
    [error] = _failed_with(stack.client("c"), b"\n\n")
    assert error.code == "empty_file"


def test_a_file_that_is_not_jsonl_fails_the_batch(stack):
    [error] = _failed_with(stack.client("c"), b"custom_id,prompt\n1,hello\n2,world\n")
    assert error.code == "invalid_file_format" and error.line == 1


def test_a_file_over_the_line_limit_fails_the_batch(stack):
    limit = int(STACK_LIMITS["PAGEBATCH_MAX_BATCH_LINES"])
    lines = [chat_line(f"r{i}", stack.model) for i in range(limit + 1)]
    [error] = _failed_with(stack.client("c"), jsonl(lines))
    assert error.code == "too_many_lines" and error.line == limit + 1


def test_a_file_over_the_size_limit_fails_the_batch(stack):
    limit = int(STACK_LIMITS["PAGEBATCH_MAX_BATCH_BYTES"])
    padding = "x" * 2000
    lines = [chat_line(f"r{i}", stack.model, padding) for i in range(limit // 2000 + 2)]
    content = jsonl(lines)
    assert limit < len(content) < int(STACK_LIMITS["PAGEBATCH_MAX_UPLOAD_BYTES"])
    [error] = _failed_with(stack.client("c"), content)
    assert error.code == "file_too_large"


def test_uploads_over_the_limit_are_refused(stack):
    client = stack.client("c")
    big = b"x" * (int(STACK_LIMITS["PAGEBATCH_MAX_UPLOAD_BYTES"]) + 70 * 1024)
    with pytest.raises(openai.APIStatusError) as e:
        upload(client, big)
    assert e.value.status_code == 413


def test_bad_batch_requests_are_refused(stack):
    client = stack.client("c")
    file = upload(client, jsonl([chat_line("x", stack.model)]))
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="forever")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
    assert json.loads(client.files.content(file.id).text)["custom_id"] == "x"


WINDOWS = {"24h": 86400, "48h": 172800, "1h": 3600, "90m": 5400, "3s": 3, "2d": 172800, "7d": 604800}


def test_every_accepted_completion_window_is_the_deadline_asked_for(stack):
    client = stack.client("c")
    file = upload(client, jsonl([chat_line("w", stack.model, max_tokens=1)]))
    for window, seconds in WINDOWS.items():
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window=window)
        assert batch.completion_window == window and batch.expires_at - batch.created_at == seconds, window
        assert client.batches.retrieve(batch.id).expires_at == batch.expires_at


def test_other_completion_windows_are_refused_naming_the_parameter(stack):
    client = stack.client("c")
    file = upload(client, jsonl([chat_line("w", stack.model)]))
    for window in ["8d", "0h", "24", "24 h", "1w", "-1h", "1.5h"]:
        with pytest.raises(openai.BadRequestError) as e:
            client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window=window)
        error = e.value.body
        assert error["param"] == "completion_window" and error["type"] == "invalid_request_error"
        assert "completion_window" in error["message"] and window in error["message"]
