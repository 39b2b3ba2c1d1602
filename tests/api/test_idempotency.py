"""Idempotency-Key on POST /v1/files and POST /v1/batches, on the real stack; key expiry on a real redis-server."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from pagebatch.jobs.store.idempotency import IdempotencyStore, fingerprint
from tests.batch_helpers import chat_line, jsonl


def api(stack, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer key-{tenant}"}, timeout=60)


def upload(client: httpx.Client, content: bytes, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}, headers=headers)


def test_twenty_concurrent_creates_with_one_key_make_one_batch(stack):
    client = api(stack, "i")
    file_id = upload(client, jsonl([chat_line("only", stack.model, max_tokens=2)])).json()["id"]
    before = {b["id"] for b in client.get("/batches", params={"limit": 100}).json()["data"]}
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}

    def create(_: int) -> httpx.Response:
        with api(stack, "i") as own:
            return own.post("/batches", json=body, headers={"Idempotency-Key": "nightly-2024-06-01"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(create, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    after = {b["id"] for b in client.get("/batches", params={"limit": 100}).json()["data"]}
    assert after - before == ids

    # the same key with another request is refused, and says why
    other = client.post("/batches", json={**body, "metadata": {"run": "2"}},
                        headers={"Idempotency-Key": "nightly-2024-06-01"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert "different request" in other.json()["error"]["message"]
    # keys belong to a tenant: another tenant's same key is a key of its own
    theirs = api(stack, "j")
    their_file = upload(theirs, jsonl([chat_line("only", stack.model, max_tokens=2)])).json()["id"]
    mine = theirs.post("/batches", json={**body, "input_file_id": their_file},
                       headers={"Idempotency-Key": "nightly-2024-06-01"})
    assert mine.status_code == 200 and mine.json()["id"] not in ids


def test_file_uploads_with_a_key_store_once(stack):
    client = api(stack, "i")
    content = jsonl([chat_line("a", stack.model)])
    first, again = upload(client, content, "upload-1"), upload(client, content, "upload-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    changed = upload(client, content + b"\n" + jsonl([chat_line("b", stack.model)]), "upload-1")
    assert changed.status_code == 409 and changed.json()["error"]["param"] == "Idempotency-Key"
    # a request that fails frees its key: the corrected retry creates
    missing = client.post("/batches", json={"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"},
                          headers={"Idempotency-Key": "retry-me"})
    assert missing.status_code == 404
    fixed = client.post("/batches", json={"input_file_id": first.json()["id"], "endpoint": "/v1/chat/completions"},
                        headers={"Idempotency-Key": "retry-me"})
    assert fixed.status_code == 200 and fixed.json()["input_file_id"] == first.json()["id"]
    bad = client.post("/batches", json={"input_file_id": first.json()["id"], "endpoint": "/v1/chat/completions"},
                      headers={"Idempotency-Key": "bad\x7fkey"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_idempotency_key"


def test_a_key_is_forgotten_after_its_ttl(redis_server):
    store = IdempotencyStore(redis.Redis.from_url(redis_server.url, decode_responses=True), ttl_s=1)
    request = fingerprint("body")
    claim = store.claim("t", "batches", "k", request)
    assert claim.owner is not None
    store.record("t", "batches", "k", {"id": "batch_1"})
    assert store.claim("t", "batches", "k", request).answer == {"id": "batch_1"}
    assert store.claim("other", "batches", "k", request).owner is not None  # per tenant
    time.sleep(1.2)
    assert store.claim("t", "batches", "k", fingerprint("another body")).owner is not None
