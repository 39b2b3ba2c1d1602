"""Results while a batch runs and its progress stream, on the real stack (redis-server, moto S3, API, worker)."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.batch_helpers import chat_line, jsonl, read_jsonl, upload, wait_status

LINES = 2000
SHARD_SIZE = 100


def read_sse(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line == "" and name is not None:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


@pytest.fixture
def big_stack(make_stack):
    stack = make_stack(PAGEBATCH_SHARD_SIZE=str(SHARD_SIZE), PAGEBATCH_MAX_BATCH_LINES=str(LINES),
                       PAGEBATCH_MAX_BATCH_BYTES=str(4 << 20), PAGEBATCH_MAX_UPLOAD_BYTES=str(4 << 20),
                       PAGEBATCH_PROGRESS_INTERVAL_S="0.2")
    stack.start_worker()
    return stack


def test_lines_read_while_the_batch_runs_are_the_final_files_byte_for_byte(big_stack):
    stack = big_stack
    client = stack.client("a")
    api = httpx.Client(base_url=stack.base_url, headers={"Authorization": "Bearer key-a"}, timeout=30)
    lines = [chat_line(f"doc-{i}", stack.model, f"summarize document {i} please", max_tokens=12, temperature=0)
             for i in range(LINES - 20)]
    lines += [chat_line(f"ghost-{i}", "no-such-model") for i in range(10)]  # rejected while validating
    lines += [chat_line(f"huge-{i}", stack.model, max_tokens=4090) for i in range(10)]  # over the context: the engine refuses
    batch = client.batches.create(input_file_id=upload(client, jsonl(lines)).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")

    events: list[tuple[str, dict]] = []

    def follow() -> None:
        with api.stream("GET", f"/batches/{batch.id}/progress", timeout=180) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events.extend(read_sse(response))

    follower = threading.Thread(target=follow)
    follower.start()

    output, errors, cursor, reads_in_progress = [], [], None, 0
    deadline = time.monotonic() + 180
    while True:
        page = api.get(f"/batches/{batch.id}/results", params={"after": cursor} if cursor else {}).json()
        output += page["output"]
        errors += page["errors"]
        cursor = page["cursor"]
        if page["status"] == "in_progress" and (page["output"] or page["errors"]):
            reads_in_progress += 1
        if page["complete"]:
            break
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05 if page["has_more"] else 0.15)
    follower.join(60)

    batch = wait_status(client, batch.id, logs=stack.logs)
    assert batch.status == "completed"
    final_output = client.files.content(batch.output_file_id).text.splitlines()
    final_errors = client.files.content(batch.error_file_id).text.splitlines()
    assert len(final_output) == LINES - 20 and len(final_errors) == 20
    assert reads_in_progress >= 5, reads_in_progress
    # every line exactly once, and each the very text of the final file
    assert len(output) == len(final_output) and Counter(output) == Counter(final_output)
    assert len(errors) == len(final_errors) and Counter(errors) == Counter(final_errors)

    # the progress stream: a shard event per shard, snapshots in between, and the final status last
    shard_events = [data for name, data in events if name == "shard"]
    progress = [data for name, data in events if name == "progress"]
    assert progress[-1]["num_shards"] == (LINES - 10) // SHARD_SIZE + 1
    assert sorted(e["shard"] for e in shard_events) == list(range(progress[-1]["num_shards"]))
    assert events[-1][0] == "progress" and progress[-1]["status"] == "completed"
    assert progress[-1]["request_counts"] == {"total": LINES, "completed": LINES - 20, "failed": 20}
    assert progress[-1]["usage"]["output_tokens"] == batch.usage.output_tokens
    running = [p for p in progress if p["status"] == "in_progress" and p["request_counts"]["completed"]]
    assert running and all(p["tokens_per_second"] is not None and p["tokens_per_second"] >= 0 for p in running)
    assert any(p["eta_seconds"] for p in running)
    assert any(e.startswith("ghost-0: model_not_found") for e in progress[-1]["first_errors"]), progress[-1]


def test_results_of_an_ended_batch_page_through_its_files_in_order(stack):
    client = stack.client("k")
    api = httpx.Client(base_url=stack.base_url, headers={"Authorization": "Bearer key-k"}, timeout=30)
    lines = [chat_line(f"r-{i}", stack.model, f"text {i}", max_tokens=3) for i in range(25)]
    lines += [chat_line("bad", "no-such-model"), "{not json"]
    batch = client.batches.create(input_file_id=upload(client, jsonl(lines)).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_status(client, batch.id, logs=stack.logs)
    final = (client.files.content(batch.output_file_id).text.splitlines(),
             client.files.content(batch.error_file_id).text.splitlines())

    pages, cursor = [], None
    while True:
        page = api.get(f"/batches/{batch.id}/results", params={"limit": 7, **({"after": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        page = page.json()
        pages.append(page)
        cursor = page["cursor"]
        if page["complete"]:
            break
    assert all(len(p["output"]) + len(p["errors"]) <= 7 for p in pages)
    assert [line for p in pages for line in p["output"]] == final[0]
    assert [line for p in pages for line in p["errors"]] == final[1]
    again = api.get(f"/batches/{batch.id}/results", params={"after": cursor}).json()
    assert again["output"] == again["errors"] == [] and again["complete"]

    # nothing of another tenant's batch, and a cursor this server never issued is refused
    assert api.get(f"/batches/{batch.id}/results", headers={"Authorization": "Bearer key-j"}).status_code == 404
    bad = api.get(f"/batches/{batch.id}/results", params={"after": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    with api.stream("GET", f"/batches/{batch.id}/progress") as response:
        ended = read_sse(response)
    assert [name for name, _ in ended] == ["progress"] and ended[0][1]["status"] == "completed"
    assert ended[0][1]["first_errors"][0].startswith("bad: model_not_found"), ended
    assert read_jsonl(client, batch.error_file_id)[0]["custom_id"] == "bad"


def test_a_cancelled_batch_reads_to_the_end_of_its_files(stack):
    client = stack.client("q")
    api = httpx.Client(base_url=stack.base_url, headers={"Authorization": "Bearer key-q"}, timeout=30)
    lines = [chat_line(f"short-{i}", stack.model, f"quick {i}", max_tokens=2) for i in range(16)]
    lines += [chat_line(f"long-{i}", stack.model, f"ramble {i}", max_tokens=3500, ignore_eos=True) for i in range(16)]
    batch = client.batches.create(input_file_id=upload(client, jsonl(lines)).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    output, errors, cursor = [], [], None

    def read() -> dict:
        nonlocal output, errors, cursor
        page = api.get(f"/batches/{batch.id}/results", params={"after": cursor} if cursor else {}).json()
        output, errors, cursor = output + page["output"], errors + page["errors"], page["cursor"]
        return page

    deadline = time.monotonic() + 60
    while len(output) < 16:  # the short lines' shards finish while the long ones run
        assert read()["status"] in ("validating", "in_progress") and time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
    assert client.batches.cancel(batch.id).status == "cancelling"
    while not read()["complete"]:
        assert time.monotonic() < deadline + 30, stack.logs()
        time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    assert Counter(output) == Counter(client.files.content(batch.output_file_id).text.splitlines())
    assert Counter(errors) == Counter(client.files.content(batch.error_file_id).text.splitlines())
    assert len(output) == 16 and len(errors) == 16
