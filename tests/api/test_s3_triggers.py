"""S3 uploads start batches on the real stack: the webhook (AWS and MinIO payloads), `pagebatch watch`, the outbox."""
import json
import shutil
import subprocess
import sys
import threading
import time
from urllib.parse import quote_plus

import httpx

from tests.batch_helpers import chat_line, jsonl, read_jsonl, wait_status

TENANT = "s"


def aws_event(bucket, key, etag, name="ObjectCreated:Put"):
    # S3 form-encodes the key but leaves "/" alone
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                         "eventTime": "2024-06-01T02:00:00.000Z", "eventName": name,
                         "s3": {"s3SchemaVersion": "1.0", "configurationId": "inbox",
                                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                                "object": {"key": quote_plus(key, safe="/"), "size": 1, "eTag": etag,
                                           "sequencer": "0055AED6DCD90281E5"}}}]}


def minio_event(bucket, key, etag):
    record = aws_event(bucket, key, etag)["Records"][0]
    record.update(eventVersion="2.0", eventSource="minio:s3", eventName="s3:ObjectCreated:Put")
    record["s3"]["object"]["key"] = quote_plus(key, safe="")  # MinIO query-escapes "/" too
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}


def post(stack, payload, tenant=TENANT, **params):
    return httpx.post(f"{stack.base_url}/s3/events", params=params, timeout=30,
                      content=payload if isinstance(payload, bytes) else json.dumps(payload),
                      headers={"Authorization": f"Bearer key-{tenant}", "Content-Type": "application/json"})


def put(s3, bucket, key, content):
    return s3.put_object(Bucket=bucket, Key=key, Body=content)["ETag"].strip('"')


def wait_object(s3, bucket, key, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, f"s3://{bucket}/{key} never appeared"
            time.sleep(0.2)


def outbox(s3, bucket, prefix):
    batch = json.loads(wait_object(s3, bucket, prefix + "batch.json"))  # written last
    files = {name: [json.loads(line) for line in wait_object(s3, bucket, prefix + name).decode().splitlines()]
             for name in ("output.jsonl", "errors.jsonl", "usage.jsonl")}
    return batch, files


def batches_from(client, source):
    return [b for b in client.batches.list(limit=100) if (b.metadata or {}).get("source") == source]


def test_aws_event_delivered_twice_starts_one_batch_and_fills_the_outbox(stack, moto_s3):
    s3, bucket, client = moto_s3.client(), moto_s3.new_bucket(), stack.client(TENANT)
    key = "reports/inbox/night 1+2 (café).jsonl"
    lines = [chat_line(f"r{i}", stack.model, f"summarize {i}", max_tokens=3) for i in range(5)]
    for line in lines:
        del line["body"]["model"]  # the webhook URL's ?model= names it
    etag = put(s3, bucket, key, jsonl([*lines, "{not json"]))

    first = post(stack, aws_event(bucket, key, etag), model=stack.model)
    again = post(stack, aws_event(bucket, key, f'"{etag}"'), model=stack.model)
    assert first.status_code == again.status_code == 200, first.text
    [started], [duplicate] = first.json()["data"], again.json()["data"]
    assert started["status"] == "started" and started["key"] == key and started["etag"] == etag
    assert duplicate["status"] == "duplicate" and duplicate["batch_id"] == started["batch_id"]

    batch = wait_status(client, started["batch_id"], logs=stack.logs)
    assert batch.status == "completed" and batch.metadata == {"source": f"s3://{bucket}/{key}"}
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 1)
    assert [b.id for b in batches_from(client, f"s3://{bucket}/{key}")] == [batch.id]

    public, files = outbox(s3, bucket, "reports/outbox/night 1+2 (café)/")
    assert public["id"] == batch.id and public["status"] == "completed" and "outbox" not in public
    assert public["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert sorted(o["custom_id"] for o in files["output.jsonl"]) == [f"r{i}" for i in range(5)]
    assert files["output.jsonl"] == read_jsonl(client, batch.output_file_id)
    assert [e["response"]["body"]["error"]["code"] for e in files["errors.jsonl"]] == ["invalid_json"]
    assert len(files["usage.jsonl"]) == 6
    assert post(stack, aws_event(bucket, key, etag)).json()["data"][0]["status"] == "duplicate"  # and later too


def test_minio_event_delivered_concurrently_starts_one_batch(stack, moto_s3):
    s3, bucket, client = moto_s3.client(), moto_s3.new_bucket(), stack.client(TENANT)
    key = "inbox/labels 2024-06.jsonl"
    etag = put(s3, bucket, key, jsonl([chat_line(f"m{i}", stack.model, max_tokens=2) for i in range(3)]))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post(stack, minio_event(bucket, key, etag))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(a.json()["data"][0]["status"] for a in answers)
    assert statuses == ["duplicate", "started"]
    [batch] = batches_from(client, f"s3://{bucket}/{key}")
    batch = wait_status(client, batch.id, logs=stack.logs)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    public, files = outbox(s3, bucket, "outbox/labels 2024-06/")
    assert public["status"] == "completed"
    assert (len(files["output.jsonl"]), len(files["errors.jsonl"]), len(files["usage.jsonl"])) == (3, 0, 3)


def test_what_starts_nothing_is_answered_and_never_a_5xx(stack, moto_s3):
    s3, bucket = moto_s3.client(), moto_s3.new_bucket()
    etag = put(s3, bucket, "inbox/x.jsonl", jsonl([chat_line("x", stack.model)]))
    ignored = {
        "deletion": aws_event(bucket, "inbox/x.jsonl", etag, name="ObjectRemoved:Delete"),
        "not an inbox file": aws_event(bucket, "inbox/x.csv", etag),
        "no longer exists": aws_event(bucket, "inbox/gone.jsonl", etag),
        "bucket does not exist": aws_event("pb-no-such-bucket", "inbox/x.jsonl", etag),
        "changed since the event": aws_event(bucket, "inbox/x.jsonl", "0" * 32),
        "test event": {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket},
        "no Records": {"message": "hello"},
        "s3.object.key": {"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]},
    }
    for reason, payload in ignored.items():
        response = post(stack, payload)
        assert response.status_code == 200, (reason, response.text)
        [outcome] = response.json()["data"]
        assert outcome["status"] == "ignored" and reason in outcome["reason"], (reason, outcome)
        assert response.json()["started"] == 0

    refused = {b"{not json": 400, b"[1, 2]": 400, b"[" * 200_000: 400,
               json.dumps({"Records": [{}] * 101}).encode(): 400, b" " * (1024 * 1024 + 1): 413}
    for payload, status in refused.items():
        response = post(stack, payload)
        assert response.status_code == status and response.json()["error"]["message"], response.text
    assert post(stack, aws_event(bucket, "inbox/x.jsonl", etag), endpoint="/v1/moderations").status_code == 400
    assert post(stack, aws_event(bucket, "inbox/x.jsonl", etag), tenant="nobody").status_code == 401
    assert batches_from(stack.client(TENANT), f"s3://{bucket}/inbox/x.jsonl") == []


def test_a_tenant_cannot_start_batches_on_a_bucket_it_does_not_own(stack, moto_s3):
    """PAGEBATCH_INBOX_BUCKETS gives pb-* buckets to tenant-s: tenant-l's key is refused them, as is the storage prefix."""
    s3, bucket = moto_s3.client(), moto_s3.new_bucket()
    etag = put(s3, bucket, "inbox/theirs.jsonl", jsonl([chat_line("a", stack.model)]))
    response = post(stack, aws_event(bucket, "inbox/theirs.jsonl", etag), tenant="l", model=stack.model)
    assert response.status_code == 200
    [outcome] = response.json()["data"]
    assert outcome["status"] == "ignored" and "PAGEBATCH_INBOX_BUCKETS" in outcome["reason"]
    assert batches_from(stack.client("l"), f"s3://{bucket}/inbox/theirs.jsonl") == []
    storage_bucket, prefix = stack.env["PAGEBATCH_STORAGE"].removeprefix("s3://").split("/", 1)
    inside = f"{prefix}/inbox/x.jsonl"
    etag = put(s3, storage_bucket, inside, jsonl([chat_line("a", stack.model)]))
    [outcome] = post(stack, aws_event(storage_bucket, inside, etag), model=stack.model).json()["data"]
    assert outcome["status"] == "ignored" and "storage prefix" in outcome["reason"]


def watch_once(stack, url):
    exe = shutil.which("pagebatch")
    cmd = [exe] if exe else [sys.executable, "-m", "pagebatch.jobs.commands.cli"]
    done = subprocess.run([*cmd, "watch", url, "--once", "--tenant", f"tenant-{TENANT}", "--model", stack.model],
                          env=stack.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_watch_finds_each_new_file_once(stack, moto_s3):
    s3, bucket, client = moto_s3.client(), moto_s3.new_bucket(), stack.client(TENANT)
    line = chat_line("w", stack.model, max_tokens=2)
    del line["body"]["model"]  # --model names it
    put(s3, bucket, "nightly/inbox/a.jsonl", jsonl([line]))
    put(s3, bucket, "nightly/inbox/notes.txt", b"not a batch")
    put(s3, bucket, "nightly/inbox/old/b.jsonl", jsonl([line]))
    url = f"s3://{bucket}/nightly/inbox/"

    assert "1 started, 0 already started, 0 ignored" in watch_once(stack, url)
    assert "0 started, 1 already started" in watch_once(stack, url)
    etag = put(s3, bucket, "nightly/inbox/c d.jsonl", jsonl([line]))
    # a file the webhook started already is not started again by the poller: one claim for both paths
    assert post(stack, aws_event(bucket, "nightly/inbox/c d.jsonl", etag)).json()["data"][0]["status"] == "started"
    put(s3, bucket, "nightly/inbox/e.jsonl", jsonl([line]))
    assert "1 started, 2 already started" in watch_once(stack, url)

    for name in ("a", "c d", "e"):
        [batch] = batches_from(client, f"s3://{bucket}/nightly/inbox/{name}.jsonl")
        assert wait_status(client, batch.id, logs=stack.logs).status == "completed"
    public, files = outbox(s3, bucket, "nightly/outbox/a/")
    assert public["request_counts"]["completed"] == 1 and len(files["output.jsonl"]) == 1
    assert not batches_from(client, f"s3://{bucket}/nightly/inbox/old/b.jsonl")
