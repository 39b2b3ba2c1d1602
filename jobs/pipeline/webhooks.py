"""Completion webhooks, as OpenAI sends them: ``batch.completed`` / ``failed`` / ``expired`` / ``cancelled``.

When a batch reaches a terminal status, the step that moved it (finalize, or prepare's ``fail_batch``)
calls :func:`enqueue`, which only records the delivery in Redis (jobs/store/webhook_outbox.py); the
workers' ``webhooks`` background thread (:class:`WebhookSender`) POSTs due deliveries to the tenant's
endpoint (``PAGEBATCH_WEBHOOKS``), signed per Standard Webhooks with the tenant's secret
(``PAGEBATCH_WEBHOOK_SECRETS``), and retries a failure (error, timeout, non-2xx, a redirect) with
exponential backoff and jitter until ``webhook_max_attempts`` or ``webhook_max_age_s``. Receivers are
sent to concurrently and each attempt has one total deadline, so a slow receiver delays only its own events. Delivery is
at least once: receivers dedupe by ``webhook-id``, which is the same on every attempt of one event.

The body is OpenAI's event object,
``{"id": "evt_...", "object": "event", "created_at": <the batch's completed_at / failed_at / ...>,
"type": "batch.completed", "data": {"id": "batch_..."}}``; its id is derived from the batch and the
event type, so a re-run step enqueues the same event, never a second one.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Callable, Mapping

import httpx

from pagebatch.jobs.batch.lifecycle import BatchStatus
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.webhook_outbox import Delivery, WebhookOutbox

log = get_logger(__name__)

EVENT_TYPES: dict[str, str] = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.EXPIRED: "batch.expired",
    BatchStatus.CANCELLED: "batch.cancelled",
}
SECRET_PREFIX = "whsec_"
USER_AGENT = "pagebatch-webhooks/1"
TOLERANCE_S = 300  # what verify() accepts between webhook-timestamp and the receiver's clock


class WebhookVerificationError(ValueError):
    """The request is not a webhook signed with this secret (or it is too old / from the future)."""


# --- the event ---------------------------------------------------------------------------------------

def event_id(batch_id: str, event_type: str) -> str:
    """``evt_<32 hex>``, the same for the same batch and event type (so re-enqueueing changes nothing)."""
    return "evt_" + hashlib.sha256(f"{batch_id}\n{event_type}".encode()).hexdigest()[:32]


def webhook_id(event: str) -> str:
    """The ``webhook-id`` header of an event's deliveries: the same on every attempt."""
    return "wh_" + event.removeprefix("evt_")


def event_for(record: BatchRecord) -> tuple[str, str] | None:
    """(event id, JSON body) for a batch in a terminal status; None for any other status."""
    event_type = EVENT_TYPES.get(record.status)
    if event_type is None:
        return None
    created_at = getattr(record, f"{record.status}_at", None) or int(time.time())
    ident = event_id(record.id, event_type)
    body = {"id": ident, "object": "event", "created_at": int(created_at), "type": event_type,
            "data": {"id": record.id}}
    return ident, json.dumps(body, separators=(",", ":"))


# --- signing and verifying (Standard Webhooks, v1 = HMAC-SHA256) --------------------------------------

def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after the ``whsec_`` prefix, decoded."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body)}


def verify(secret: str, headers: Mapping[str, str], body: str | bytes, *, tolerance_s: int = TOLERANCE_S,
           now: float | None = None) -> dict:
    """Check a received webhook and return its event (parsed JSON); raise WebhookVerificationError if not ours.

    ``headers``: the request's headers (any mapping; names are matched case-insensitively); ``body``: the raw
    request body, exactly as received. The timestamp must be within ``tolerance_s`` of ``now``.
    """
    lower = {str(k).lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    expected = sign(secret, msg_id, sent_at, body).encode()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
        raise WebhookVerificationError("no matching signature")
    return json.loads(body)


# --- enqueue (the pipeline's side) --------------------------------------------------------------------

def outbox_of(svc: Services) -> WebhookOutbox:
    return WebhookOutbox(svc.redis, svc.settings.state_ttl_s)


def enqueue(svc: Services, record: BatchRecord) -> bool:
    """Record the batch's terminal event for its tenant's endpoint; False when none is configured or it is known.

    Only Redis is touched: sending happens on the workers' webhooks thread, never in the caller.
    """
    if record.tenant not in svc.settings.webhooks:
        return False
    event = event_for(record)
    if event is None:
        return False
    ident, body = event
    added = outbox_of(svc).add(Delivery(ident, record.tenant, body, first_at=time.time()))
    if added:
        log.info("webhook enqueued", batch_id=record.id, event_id=ident, type=EVENT_TYPES[record.status])
    return added


def enqueue_best_effort(svc: Services, record: BatchRecord) -> None:
    """For a step that is not retried (fail_batch): log a failed enqueue instead of raising."""
    try:
        enqueue(svc, record)
    except Exception:
        log.exception("webhook enqueue failed", batch_id=record.id)


# --- delivery (the workers' side) ---------------------------------------------------------------------

def backoff_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, ...): base * 2^(attempt-1), capped at max_s, then
    jittered down by up to half (so retries of many events spread out, and none comes at once)."""
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 60))
    return ceiling / 2 + ceiling / 2 * rand()


class WebhookSender:
    """Sends due deliveries, concurrently, each receiver on its own.

    At most one attempt per receiver (tenant) is in flight in this process, and every attempt has one total
    deadline, ``webhook_timeout_s``, for connecting, sending and the whole answer (not per read): a receiver
    that drips its answer a byte at a time costs its own events that long, and nobody else's. Attempts run
    as coroutines on the sender's own event-loop thread; :meth:`pump` (the worker calls it every
    ``webhook_interval_s``, and each finished attempt calls it again) claims what is due for receivers not
    busy and starts it. :meth:`deliver_due` pumps and waits until nothing is due or in flight.
    """

    def __init__(self, svc: Services, *, budget_s: float = 30.0, max_concurrent: int = 32) -> None:
        self.svc = svc
        self.settings = svc.settings
        self.outbox = outbox_of(svc)
        self.budget_s = budget_s
        self.max_concurrent = max_concurrent
        # Long enough for one attempt and then some: a claim that runs out lets another worker send the same
        # delivery again (harmless, the id is the same).
        self.lease_s = max(30.0, 4 * self.settings.webhook_timeout_s)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pumping = threading.Lock()
        self._busy: set[str] = set()  # receivers with an attempt in flight here
        self._attempted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: httpx.AsyncClient | None = None

    # --- starting attempts ---------------------------------------------------------------------------
    def pump(self) -> int:
        """Start an attempt for every due delivery whose receiver is not busy; how many were started."""
        started = 0
        with self._pumping:
            while True:
                with self._lock:
                    if len(self._busy) >= self.max_concurrent:
                        break
                    busy = sorted(self._busy)
                delivery = self.outbox.claim(self.lease_s, skip_tenants=busy)
                if delivery is None:
                    break
                url = self.settings.webhooks.get(delivery.tenant)
                secret = self.settings.webhook_secrets.get(delivery.tenant)
                if not delivery.body or url is None or secret is None:
                    log.warning("webhook dropped: its tenant has no endpoint (any more)", event_id=delivery.event_id,
                                tenant=delivery.tenant)
                    self.outbox.finish(delivery)
                    with self._lock:
                        self._attempted += 1
                    continue
                with self._lock:
                    self._busy.add(delivery.tenant)
                future = asyncio.run_coroutine_threadsafe(self._attempt(delivery, url, secret), self._event_loop())
                future.add_done_callback(lambda f, d=delivery: self._finished(d, f))
                started += 1
        return started

    def deliver_due(self) -> int:
        """Send deliveries while any is due (for at most budget_s), waiting for each attempt; how many were made."""
        deadline = time.monotonic() + self.budget_s
        with self._lock:
            before = self._attempted
        while time.monotonic() < deadline:
            started = self.pump()
            with self._lock:
                while self._busy and time.monotonic() < deadline:
                    self._changed.wait(timeout=0.05)
                idle = not self._busy
            if started == 0 and idle:
                break
        with self._lock:
            return self._attempted - before

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._http is not None:
            asyncio.run_coroutine_threadsafe(self._http.aclose(), loop).result(timeout=5)
            self._http = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = None

    # --- one attempt -----------------------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="pagebatch-webhooks-send",
                                                daemon=True)
                self._thread.start()
            return self._loop

    async def _attempt(self, delivery: Delivery, url: str, secret: str) -> None:
        failure = await self.send(url, secret, delivery)
        await asyncio.get_running_loop().run_in_executor(None, self._record, delivery, failure)

    async def send(self, url: str, secret: str, delivery: Delivery) -> str | None:
        """POST the signed event; None on a 2xx, else what went wrong. The response body is never read, and the
        whole attempt (connect, send, the status line and headers) has ``webhook_timeout_s`` in total."""
        if not url.startswith(("http://", "https://")):
            return f"not an http(s) URL: {url!r}"
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False,
                                           headers={"user-agent": USER_AGENT})
        headers = {"content-type": "application/json",
                   **signed_headers(secret, webhook_id(delivery.event_id), int(time.time()), delivery.body)}
        timeout = self.settings.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._http.stream("POST", url, content=delivery.body.encode(), headers=headers) as response:
                    status = response.status_code
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except Exception as e:  # a refused connection, a bad URL: all worth another try
            return repr(e)
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _record(self, delivery: Delivery, failure: str | None) -> None:
        s = self.settings
        context = {"event_id": delivery.event_id, "tenant": delivery.tenant}
        delivery.attempts += 1
        if failure is None:
            self.outbox.finish(delivery)
            log.info("webhook delivered", attempts=delivery.attempts, **context)
            return
        delay = backoff_s(delivery.attempts, s.webhook_retry_base_s, s.webhook_retry_max_s)
        too_old = time.time() + delay - delivery.first_at > s.webhook_max_age_s
        if delivery.attempts >= s.webhook_max_attempts or too_old:
            self.outbox.finish(delivery)
            log.error("webhook given up", attempts=delivery.attempts, error=failure, **context)
        elif self.outbox.retry(delivery, delay):
            log.warning("webhook delivery failed; retrying", attempts=delivery.attempts, error=failure,
                        retry_in_s=round(delay, 3), **context)

    def _finished(self, delivery: Delivery, future: concurrent.futures.Future) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:  # not recorded (closing, Redis away): the claim lapses, sent again
            log.warning("webhook attempt not recorded", event_id=delivery.event_id, error=repr(error))
        with self._lock:
            self._busy.discard(delivery.tenant)
            self._attempted += 1
            self._changed.notify_all()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_in_executor(None, self._pump_quietly)  # the receiver may have more due

    def _pump_quietly(self) -> None:
        try:
            self.pump()
        except Exception as e:  # the periodic pump tries again
            log.warning("webhook pump failed", error=repr(e)[:300])
