"""Lines shaped to break a parser fail alone; output files read right with every line splitter."""
import json
import time

import httpx

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, wait_status
from tests.service_fixtures import STACK_LIMITS


def test_a_deeply_nested_line_fails_alone_in_seconds(stack):
    client = stack.client("h")
    nested = '{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", "body": ' + "[" * 1500 + "]" * 1500 + "}"
    started = time.monotonic()
    batch = submit(client, [chat_line("before", stack.model), nested, chat_line("after", stack.model)])
    batch = wait_status(client, batch.id, timeout=60, logs=stack.logs)
    assert batch.status == "completed" and time.monotonic() - started < 30
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    assert sorted(o["custom_id"] for o in read_jsonl(client, batch.output_file_id)) == ["after", "before"]
    [error] = read_jsonl(client, batch.error_file_id)
    assert error["response"]["status_code"] == 400


def test_a_line_separator_in_a_custom_id_stays_one_line(stack):
    client = stack.client("h")
    odd = ["sep\u2028id", "para\u2029id", "nel\x85id", "vt\x0bid"]
    batch = wait_status(client, submit(client, [chat_line(c, stack.model) for c in odd]).id, logs=stack.logs)
    text = client.files.content(batch.output_file_id).text
    lines = text.splitlines()  # the docs' own way of reading a result file
    assert sorted(json.loads(line)["custom_id"] for line in lines) == sorted(odd)
    usage = client.files.content(batch.to_dict()["usage_file_id"]).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in usage) == sorted(odd)


def test_a_chunked_upload_over_the_limit_is_413(stack):
    limit = int(STACK_LIMITS["PAGEBATCH_MAX_UPLOAD_BYTES"])
    head = (b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--XX\r\n'
            b'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    line = jsonl([chat_line("x", stack.model)])

    def chunks():  # no Content-Length: the body arrives chunked
        yield head
        for _ in range(limit // len(line) + 100):
            yield line
        yield b"\r\n--XX--\r\n"

    answer = httpx.post(f"{stack.base_url}/files", content=chunks(), timeout=60,
                        headers={"Authorization": "Bearer key-h", "Content-Type": "multipart/form-data; boundary=XX"})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "file_too_large"
