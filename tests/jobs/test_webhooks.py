"""Completion webhooks: Standard Webhooks signatures, backoff, the Redis outbox and the sender, on real servers.

Signatures are checked against a value computed here straight from the spec and against the spec's
published test vector; the outbox runs on a real redis-server, the sender against a real HTTP server.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.pipeline import webhooks
from pagebatch.jobs.pipeline.webhooks import WebhookSender, WebhookVerificationError, backoff_s, event_for, sign, verify
from pagebatch.jobs.settings import Settings
from pagebatch.jobs.store import keys
from pagebatch.jobs.store.state import connect
from pagebatch.jobs.store.webhook_outbox import Delivery, WebhookOutbox

SECRET = "whsec_" + base64.b64encode(b"pagebatch test key, 32 bytes..!!").decode()


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every request; ``answer(request)`` picks each status."""

    def __init__(self, answer=lambda request: 200) -> None:
        self.requests: list[dict] = []
        self.answer = answer
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    request = {"path": self.path, "headers": headers, "body": body, "at": time.time()}
                    request["status"] = receiver.answer(request)
                    receiver.requests.append(request)
                self.send_response(request["status"])
                if 300 <= request["status"] < 400:
                    self.send_header("Location", "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.requests)


def record(status: str = "completed", **fields) -> BatchRecord:
    return BatchRecord.model_validate({
        "id": "batch_abc123", "tenant": "acme", "endpoint": "/v1/chat/completions", "input_file_id": "file-1",
        "completion_window": "24h", "status": status, "created_at": 1700000000, f"{status}_at": 1700000500, **fields})


# --- signing and verifying ----------------------------------------------------------------------------

def test_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret():
    body = '{"id":"evt_1","object":"event"}'
    # By hand from the spec: key = base64-decode(secret without "whsec_"); sign "{id}.{timestamp}.{body}".
    key = b"pagebatch test key, 32 bytes..!!"
    mac = hmac.new(key, b'wh_1.1700000000.{"id":"evt_1","object":"event"}', hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    assert sign(SECRET, "wh_1", 1700000000, body) == expected
    assert sign(SECRET, "wh_1", 1700000000, body.encode()) == expected


def test_signature_matches_the_published_standard_webhooks_vector():
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                '{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_ours_and_refuses_everything_else():
    body = json.dumps({"id": "evt_1", "type": "batch.completed"})
    now = 1700000000
    headers = webhooks.signed_headers(SECRET, "wh_1", now, body)
    assert verify(SECRET, headers, body, now=now + 10) == {"id": "evt_1", "type": "batch.completed"}
    assert verify(SECRET, {k.title(): v for k, v in headers.items()}, body.encode(), now=now)  # any header case
    rotated = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]}
    assert verify(SECRET, rotated, body, now=now)  # one of several signatures matches

    other = "whsec_" + base64.b64encode(b"another key").decode()
    refused = [
        (SECRET, headers, body.replace("evt_1", "evt_2"), now),  # a tampered body
        (other, headers, body, now),  # another secret
        (SECRET, headers, body, now + 301),  # too old
        (SECRET, headers, body, now - 301),  # from the future
        (SECRET, {**headers, "webhook-id": "wh_2"}, body, now),  # the id is signed too
        (SECRET, {**headers, "webhook-timestamp": str(now + 1)}, body, now),  # so is the timestamp
        (SECRET, {k: v for k, v in headers.items() if k != "webhook-signature"}, body, now),
        (SECRET, {**headers, "webhook-timestamp": "soon"}, body, now),
    ]
    for secret, hdrs, payload, at in refused:
        with pytest.raises(WebhookVerificationError):
            verify(secret, hdrs, payload, now=at)


def test_the_openai_sdk_verifies_and_parses_our_events():
    from openai import OpenAI

    _, body = event_for(record("completed"))
    headers = webhooks.signed_headers(SECRET, "wh_x", int(time.time()), body)
    event = OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
    assert (event.type, event.data.id, event.created_at) == ("batch.completed", "batch_abc123", 1700000500)


# --- the event ----------------------------------------------------------------------------------------

def test_each_terminal_status_has_its_event_and_the_event_id_is_stable():
    for status in ("completed", "failed", "expired", "cancelled"):
        ident, body = event_for(record(status))
        assert json.loads(body) == {"id": ident, "object": "event", "created_at": 1700000500,
                                    "type": f"batch.{status}", "data": {"id": "batch_abc123"}}
        assert ident.startswith("evt_") and event_for(record(status)) == (ident, body)
    assert len({event_for(record(s))[0] for s in ("completed", "failed", "expired", "cancelled")}) == 4
    for status in ("validating", "in_progress", "finalizing", "cancelling"):
        assert event_for(record(status)) is None


# --- backoff ------------------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_cap_and_jitters_down_by_at_most_half():
    assert [backoff_s(n, 10, 3600, rand=lambda: 1.0) for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert [backoff_s(n, 10, 3600, rand=lambda: 0.0) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert backoff_s(9, 10, 3600, rand=lambda: 1.0) == 2560
    assert backoff_s(10, 10, 3600, rand=lambda: 1.0) == backoff_s(500, 10, 3600, rand=lambda: 1.0) == 3600
    spread = {round(backoff_s(3, 10, 3600), 6) for _ in range(50)}
    assert len(spread) > 40 and all(20 <= d <= 40 for d in spread)


# --- settings -----------------------------------------------------------------------------------------

def test_settings_parse_endpoints_and_secrets_per_tenant():
    s = Settings(webhooks="acme=https://hooks.example/pb?k=v, beta=http://10.0.0.1:8080/x",
                 webhook_secrets=f"acme={SECRET},beta={SECRET}")
    assert s.webhooks == {"acme": "https://hooks.example/pb?k=v", "beta": "http://10.0.0.1:8080/x"}
    assert s.webhook_secrets == {"acme": SECRET, "beta": SECRET}
    for bad in [{"webhooks": "acme=ftp://hooks.example/x", "webhook_secrets": f"acme={SECRET}"},
                {"webhooks": "acme=hooks.example/x", "webhook_secrets": f"acme={SECRET}"},
                {"webhooks": "bad tenant=https://hooks.example/x"},
                {"webhooks": "acme=https://hooks.example/x"},  # no secret for it
                {"webhook_secrets": "acme=secret"},  # no whsec_ prefix
                {"webhook_secrets": "acme=whsec_not*base64"},
                {"webhooks": {"acme": "file:///etc/passwd"}, "webhook_secrets": {"acme": SECRET}}]:
        with pytest.raises(ValueError):
            Settings(**bad)


# --- the outbox on a real redis-server ----------------------------------------------------------------

@pytest.fixture
def client(redis_server):
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    yield client
    client.flushdb()


def test_the_outbox_adds_each_event_once_and_a_claim_hides_it_until_its_lease_ends(client):
    outbox = WebhookOutbox(client, done_ttl_s=60)
    delivery = Delivery("evt_1", "acme", '{"id":"evt_1"}', first_at=time.time())
    assert outbox.add(delivery)
    assert not outbox.add(Delivery("evt_1", "acme", '{"other":1}', first_at=time.time()))  # known already
    assert outbox.pending()["evt_1"].body == '{"id":"evt_1"}'

    claimed = outbox.claim(lease_s=0.3)
    assert claimed is not None and (claimed.event_id, claimed.body, claimed.attempts) == ("evt_1", '{"id":"evt_1"}', 0)
    assert outbox.claim(lease_s=0.3) is None  # a second worker finds nothing while the claim holds
    time.sleep(0.4)
    again = outbox.claim(lease_s=5)  # the first claimer died: it is sent again
    assert again is not None and again.event_id == "evt_1" and again.claim != claimed.claim

    assert not outbox.retry(claimed, 1.0)  # a stale claim cannot reschedule it
    again.attempts = 1
    assert outbox.retry(again, 2.0)
    due_in = outbox.due_at("evt_1") - outbox.now()
    assert 1.8 < due_in <= 2.0 and outbox.pending()["evt_1"].attempts == 1
    assert outbox.claim(lease_s=5) is None  # not due yet

    outbox.finish(again)
    assert outbox.pending() == {} and outbox.due_at("evt_1") is None
    assert not outbox.add(delivery)  # delivered: a late re-enqueue (a re-run finalize) is ignored
    assert 0 < client.ttl(keys.webhook_done("evt_1")) <= 60


def test_claims_come_out_earliest_due_first_and_never_twice(client):
    outbox = WebhookOutbox(client)
    for i in range(20):
        outbox.add(Delivery(f"evt_{i}", "acme", "{}", first_at=time.time()))
    seen: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (d := outbox.claim(lease_s=30)) is not None:
            with lock:
                seen.append(d.event_id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(f"evt_{i}" for i in range(20))


# --- the sender against a real HTTP endpoint ----------------------------------------------------------

def sender_for(client, url: str, **overrides) -> WebhookSender:
    settings = Settings(webhooks={"acme": url}, webhook_secrets={"acme": SECRET}, webhook_timeout_s=2,
                        **{"webhook_retry_base_s": 0.05, **overrides})
    return WebhookSender(SimpleNamespace(settings=settings, redis=client))


def test_a_failed_delivery_is_retried_with_backoff_and_the_same_id_until_a_2xx(client):
    answers = iter([500, 503, 200])
    with Receiver(lambda request: next(answers)) as receiver:
        sender = sender_for(client, receiver.url, webhook_retry_base_s=0.2)
        assert webhooks.enqueue(sender.svc, record("completed"))
        assert not webhooks.enqueue(sender.svc, record("completed"))  # enqueued once
        assert not webhooks.enqueue(sender.svc, record("in_progress"))
        ident, body = event_for(record("completed"))

        assert sender.deliver_due() == 1  # 500: due again in 0.1-0.2 s
        due_in = sender.outbox.due_at(ident) - sender.outbox.now()
        assert 0.05 < due_in <= 0.2 and sender.outbox.pending()[ident].attempts == 1
        assert sender.deliver_due() == 0
        deadline = time.monotonic() + 5
        while sender.outbox.pending() and time.monotonic() < deadline:
            sender.deliver_due()
            time.sleep(0.02)
        assert sender.outbox.pending() == {}
        sender.close()

    got = receiver.received()
    assert [r["status"] for r in got] == [500, 503, 200]
    assert {r["headers"]["webhook-id"] for r in got} == {webhooks.webhook_id(ident)}
    assert all(r["body"] == body.encode() and r["path"] == "/hooks" for r in got)
    assert all(r["headers"]["content-type"] == "application/json" for r in got)
    assert all(r["headers"]["user-agent"] == webhooks.USER_AGENT for r in got)
    for r in got:
        assert verify(SECRET, r["headers"], r["body"])["type"] == "batch.completed"


def test_redirects_are_not_followed_and_attempts_are_bounded(client):
    with Receiver(lambda request: 302) as receiver:
        sender = sender_for(client, receiver.url, webhook_retry_base_s=0.01, webhook_max_attempts=3)
        assert webhooks.enqueue(sender.svc, record("failed"))
        deadline = time.monotonic() + 5
        while sender.outbox.pending() and time.monotonic() < deadline:
            sender.deliver_due()
            time.sleep(0.02)
        sender.close()
    assert sender.outbox.pending() == {}  # given up after 3 attempts
    assert [r["path"] for r in receiver.received()] == ["/hooks"] * 3  # never "/moved"


def test_deliveries_give_up_at_their_max_age(client):
    sender = sender_for(client, "http://127.0.0.1:9/nothing-listens", webhook_retry_base_s=60,
                        webhook_max_age_s=30)
    sender.outbox.add(Delivery("evt_old", "acme", "{}", first_at=time.time()))
    assert sender.deliver_due() == 1  # refused; the next try (30-60 s away) would pass the max age
    assert sender.outbox.pending() == {}


def test_an_unreachable_endpoint_is_retried_and_a_tenant_without_one_is_dropped(client):
    sender = sender_for(client, "http://127.0.0.1:9/nothing-listens", webhook_retry_base_s=30)
    sender.outbox.add(Delivery("evt_a", "acme", "{}", first_at=time.time()))
    sender.outbox.add(Delivery("evt_b", "gone-tenant", "{}", first_at=time.time()))
    assert sender.deliver_due() == 2
    assert list(sender.outbox.pending()) == ["evt_a"]
    assert 14 < sender.outbox.due_at("evt_a") - sender.outbox.now() <= 30
    assert not webhooks.enqueue(sender.svc, record("completed", tenant="gone-tenant"))  # no endpoint, no event
