"""The one start-a-batch path of S3 triggers, on real redis-server and moto's S3 server over HTTP.

An object version (bucket/key/etag) starts one batch however often and however concurrently it is
announced, also after Redis lost everything; failures leave it startable again.
"""
import threading

import pytest

from pagebatch.jobs.store import layout
from pagebatch.jobs.store.claims import Claim, TriggerClaims, claim_id
from pagebatch.jobs.pipeline.outbox import publish
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.services import Services
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store.storage import bucket_storage
from pagebatch.jobs.pipeline.inbox_poll import poll_once
from pagebatch.jobs.pipeline.trigger_events import ObjectRef, TriggerOptions, normalize_etag
from pagebatch.jobs.pipeline.trigger_start import start_object
from tests.batch_helpers import chat_line, jsonl

OPTIONS = TriggerOptions(tenant="acme", model="tiny-llama")


@pytest.fixture
def svc(redis_server, moto_s3, tmp_path, monkeypatch):
    for key, value in moto_s3.env().items():
        monkeypatch.setenv(key, value)
    bucket_storage.cache_clear()
    settings = Settings(redis_url=redis_server.url.rsplit("/", 1)[0] + "/7", storage=str(tmp_path / "data"),
                        max_upload_bytes=64 * 1024)
    services = Services.from_settings(settings)
    services.redis.flushdb()
    yield services
    services.redis.flushdb()


@pytest.fixture
def inbox(moto_s3):
    bucket = moto_s3.new_bucket()
    client = moto_s3.client()

    def put(key, content=jsonl([chat_line("a", "tiny-llama")])):
        return ObjectRef(bucket, key, normalize_etag(client.put_object(Bucket=bucket, Key=key, Body=content)["ETag"]))

    put.bucket = bucket
    return put


def batches_of(svc, tenant="acme"):
    return [key for key in svc.storage.list(layout.batches_prefix(tenant))]


def test_concurrent_announcements_start_one_batch(svc, inbox):
    content = jsonl([chat_line(f"r{i}", "tiny-llama") for i in range(5)])
    ref = inbox("nightly/inbox/run 1.jsonl", content)
    outcomes, barrier = [], threading.Barrier(6)

    def deliver():
        barrier.wait()
        outcomes.append(start_object(svc, ref, OPTIONS))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes if o.status == "started"]
    assert len(started) == 1 and sorted(o.status for o in outcomes).count("duplicate") == 5
    [key] = batches_of(svc)
    record = svc.state.get("acme", started[0].batch_id)
    assert key.endswith(f"{record.id}.json")
    assert record.metadata == {"source": f"s3://{inbox.bucket}/nightly/inbox/run 1.jsonl"}
    assert record.outbox == f"s3://{inbox.bucket}/nightly/outbox/run 1/" and record.default_model == "tiny-llama"
    assert "outbox" not in record.public() and "default_model" not in record.public()
    assert b"".join(svc.files.content("acme", record.input_file_id)) == content
    # the same object announced later, by the poller this time, is still the same batch
    assert [o.status for o in poll_once(svc, inbox.bucket, "nightly/", OPTIONS)] == ["duplicate"]


def test_a_redis_restart_does_not_start_a_second_batch(svc, inbox):
    ref = inbox("inbox/x.jsonl")
    first = start_object(svc, ref, OPTIONS)
    svc.redis.flushdb()  # what a restart without persistence leaves
    again = start_object(svc, ref, OPTIONS)
    assert (first.status, again.status) == ("started", "duplicate") and again.batch_id == first.batch_id
    assert len(batches_of(svc)) == 1
    assert TriggerClaims(svc).current(claim_id(ref.bucket, ref.key, ref.etag)) == Claim("acme", first.batch_id)


def test_a_new_version_of_the_object_is_a_new_batch(svc, inbox):
    old = inbox("inbox/x.jsonl")
    assert start_object(svc, old, OPTIONS).status == "started"
    new = inbox("inbox/x.jsonl", jsonl([chat_line("b", "tiny-llama")]))
    assert new.etag != old.etag
    assert start_object(svc, new, OPTIONS).status == "started"
    assert start_object(svc, old, OPTIONS).status == "duplicate"
    assert len(batches_of(svc)) == 2


def test_failures_leave_the_object_startable(svc, inbox):
    ref = inbox("inbox/x.jsonl")
    changed = ObjectRef(ref.bucket, ref.key, "0" * 32)
    gone = ObjectRef(ref.bucket, "inbox/missing.jsonl", "1" * 32)
    too_big = inbox("inbox/big.jsonl", b"x" * (64 * 1024 + 1))
    outcomes = [start_object(svc, r, OPTIONS) for r in (changed, gone, too_big)]
    assert [o.status for o in outcomes] == ["ignored"] * 3
    assert "changed since the event" in outcomes[0].reason and "no longer exists" in outcomes[1].reason
    assert "the limit is 65536" in outcomes[2].reason
    claims = TriggerClaims(svc)
    for r in (changed, gone, too_big):
        assert claims.current(claim_id(r.bucket, r.key, r.etag)) is None
    assert batches_of(svc) == []
    assert start_object(svc, ref, OPTIONS).status == "started"


def test_an_attempt_that_died_before_its_batch_is_finished_by_the_next(svc, inbox):
    ref = inbox("inbox/x.jsonl")
    ident = claim_id(ref.bucket, ref.key, ref.etag)
    TriggerClaims(svc).write_marker(ident, ref.bucket, ref.key, ref.etag, Claim("acme", "batch_0123abcd"))
    outcome = start_object(svc, ref, OPTIONS)
    assert outcome.status == "started" and outcome.batch_id == "batch_0123abcd"
    assert svc.state.get("acme", "batch_0123abcd") is not None


def test_another_tenant_learns_nothing_about_the_batch(svc, inbox):
    ref = inbox("inbox/x.jsonl")
    start_object(svc, ref, OPTIONS)
    other = start_object(svc, ref, TriggerOptions(tenant="globex"))
    assert other.status == "duplicate" and other.batch_id is None and batches_of(svc, "globex") == []


def test_outbox_holds_all_files_and_is_written_once_when_asked(svc, inbox, moto_s3):
    record = BatchRecord(id="batch_x1", tenant="acme", endpoint="/v1/chat/completions", input_file_id="file-x",
                         completion_window="24h", created_at=1, status="failed",
                         outbox=f"s3://{inbox.bucket}/a/outbox/x/")
    assert publish(svc, record)
    client = moto_s3.client()
    listed = client.list_objects_v2(Bucket=inbox.bucket, Prefix="a/outbox/x/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"a/outbox/x/{n}" for n in
                                                ("batch.json", "errors.jsonl", "output.jsonl", "usage.jsonl")]
    assert not publish(svc, record, only_if_missing=True)
    assert not publish(svc, record.model_copy(update={"outbox": None}))
