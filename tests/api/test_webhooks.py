"""Completion webhooks on the real stack: a finished batch's event reaches its tenant's endpoint, signed,
and a failed delivery is retried with the same webhook-id (at least once, never a second event)."""
from __future__ import annotations

import time
from collections import defaultdict

from openai import OpenAI

from pagebatch.jobs.pipeline.webhooks import verify
from tests.batch_helpers import chat_line, submit, upload, wait_status
from tests.jobs.test_webhooks import SECRET, Receiver
from tests.service_fixtures import wait_for


def test_terminal_events_are_signed_retried_and_sent_once_per_batch(make_stack):
    def answer(request: dict) -> int:  # the first delivery of each event fails; its retry is accepted
        earlier = [r for r in receiver.requests if r["headers"]["webhook-id"] == request["headers"]["webhook-id"]]
        return 200 if earlier else 500

    with Receiver(answer) as receiver:
        stack = make_stack(PAGEBATCH_WEBHOOKS=f"tenant-a={receiver.url}/a",
                           PAGEBATCH_WEBHOOK_SECRETS=f"tenant-a={SECRET}",
                           PAGEBATCH_WEBHOOK_RETRY_BASE_S="0.5", PAGEBATCH_WEBHOOK_INTERVAL_S="0.1")
        stack.start_worker()
        client = stack.client("a")
        done = submit(client, [chat_line("r0", stack.model), chat_line("r1", stack.model, "bye")])
        empty = client.batches.create(input_file_id=upload(client, b"\n\n").id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        unhooked = submit(stack.client("b"), [chat_line("x", stack.model)])  # tenant-b has no endpoint
        assert wait_status(client, done.id, logs=stack.logs).status == "completed"
        assert wait_status(client, empty.id, logs=stack.logs).status == "failed"
        assert wait_status(stack.client("b"), unhooked.id, logs=stack.logs).status == "completed"

        wait_for(lambda: len([r for r in receiver.received() if r["status"] == 200]) >= 2, 30,
                 f"both events delivered: {receiver.received()}\n{stack.logs()}")
        time.sleep(1.5)  # long enough for a wrongly repeated delivery to show up
        got = receiver.received()

    by_id: dict[str, list[dict]] = defaultdict(list)
    for request in got:
        by_id[request["headers"]["webhook-id"]].append(request)
    assert len(by_id) == 2 and len(got) == 4, got
    events = {}
    for attempts in by_id.values():
        assert [r["status"] for r in attempts] == [500, 200]  # a retry of the same delivery, nothing more
        assert attempts[0]["body"] == attempts[1]["body"] and all(r["path"] == "/hooks/a" for r in attempts)
        for r in attempts:
            event = verify(SECRET, r["headers"], r["body"])
            sdk_event = OpenAI(api_key="unused").webhooks.unwrap(r["body"], r["headers"], secret=SECRET)
            assert (sdk_event.id, sdk_event.type, sdk_event.data.id) == (event["id"], event["type"],
                                                                         event["data"]["id"])
        events[event["type"]] = event

    assert set(events) == {"batch.completed", "batch.failed"}
    completed, failed = client.batches.retrieve(done.id), client.batches.retrieve(empty.id)
    assert events["batch.completed"]["data"] == {"id": done.id}
    assert events["batch.completed"]["created_at"] == completed.completed_at
    assert events["batch.failed"]["data"] == {"id": empty.id}
    assert events["batch.failed"]["created_at"] == failed.failed_at
    assert all(e["object"] == "event" and e["id"].startswith("evt_") for e in events.values())
