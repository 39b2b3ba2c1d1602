"""Every Redis key the service uses, in one place. Keys are built only from server-generated ids and names.

| key | type | holds |
|---|---|---|
| ``pb:batch:<id>`` | hash | the live batch record (JSON) and its version |
| ``pb:batch:<id>:progress`` | hash | shard -> {"completed", "failed"}, overwritten, never incremented |
| ``pb:batch:<id>:done`` | set | shards whose results are in storage |
| ``pb:batch:<id>:attempts`` | hash | shard -> runs started |
| ``pb:restore:<id>`` | string | held while one process rebuilds a batch Redis lost |
| ``pb:lock:sweep`` | string | one recovery sweep at a time |
| ``pb:models`` | set | every model a worker has served (a durable copy is in storage: jobs/store/registry.py) |
| ``pb:models:intact`` | string | the models set was never lost since it was last refilled |
| ``pb:preparing:<id>`` | string, TTL | held while one process writes a batch's shards (prepare, or the deadline sweep) |
| ``pb:worker:<id>`` | string, TTL | the model a live worker serves |
| ``pb:stats:<worker>`` | string, TTL | the worker's engine stats (JSON) |
| ``pb:latency:<model>`` | hash | request latency histogram counters |
| ``pb:batches:active`` / ``pb:batches:finished`` | hash | batch id -> status / status -> count |
| ``pb:trigger:<claim>`` | string | who started the batch for one S3 object version |
| ``pb:files:expiring`` | zset | "tenant|file id" by the time the file expires |
| ``pb:list:<tenant>:<kind>[:records|:built]`` | zset / hash / string | a tenant's listing (jobs/store/listing.py) |
| ``pb:fair:<model>:<part>[<suffix>]`` | see FAIR_PARTS | the fair dispatch queue (jobs/store/fair_queue.py) |
| ``pb:quota:<tenant>:stored`` | hash | bytes and files the tenant stores (jobs/store/quotas.py) |
| ``pb:quota:<tenant>:pending`` | zset | "reservation|bytes" of uploads in progress, by when the reservation lapses |
| ``pb:quota:<tenant>:batches`` | set | the tenant's batches in flight |
| ``pb:quota:<tenant>:enqueued`` | hash | batch id -> {model: [lines, tokens]} it reserved |
| ``pb:quota:tenants`` | set | tenants with usage (what /metrics reports on) |
| ``pb:webhooks:due`` | zset | webhook event id -> when its next delivery attempt is due (ms, Redis time) |
| ``pb:webhooks:pending`` | hash | webhook event id -> the delivery (JSON: tenant, body, attempts, first_at) |
| ``pb:webhooks:done:<event id>`` | string, TTL | the event was delivered or given up: a late re-enqueue is ignored |
| ``pb:idem:<tenant>:<scope>:<digest>`` | hash, TTL | an Idempotency-Key's request fingerprint, state and first answer |
| ``pb:estimate:<id>`` | string, TTL | an estimate: who asked, what, and its answer once a worker gave it |
| ``pb:estimates:<model>`` | list | estimate ids waiting for a worker of the model |
| ``pagebatch.control``, ``model.<name>``, ``unacked_index`` | Celery | the task queues and kombu's unacked index |
"""
from __future__ import annotations

PREFIX = "pb:"

# Celery's Redis transport: a list per queue, and the sorted set of delivered-but-unacked messages.
CONTROL_QUEUE = "pagebatch.control"
UNACKED_INDEX = "unacked_index"
UNACKED = "unacked"  # hash: delivery tag -> the delivered message, until it is acked

BATCH_PARTS = ("progress", "done", "attempts")
SWEEP_LOCK = f"{PREFIX}lock:sweep"
MODELS = f"{PREFIX}models"
MODELS_INTACT = f"{PREFIX}models:intact"
WORKER_PREFIX = f"{PREFIX}worker:"
STATS_PREFIX = f"{PREFIX}stats:"
ACTIVE_BATCHES = f"{PREFIX}batches:active"
FINISHED_BATCHES = f"{PREFIX}batches:finished"
EXPIRING_FILES = f"{PREFIX}files:expiring"  # zset "tenant|file id" scored by expires_at
# The fair queue's parts: a ring (list) of tenants with waiting shards; per tenant ("batches:" + tenant) a ring
# of its batches; per batch ("shards:" + batch id) its waiting "index:lines:work:kind"; a set of waiting
# "batch|index"; a hash of shards in flight ("batch|index" -> "tenant|lines|work|sent|released_at|kind"); hashes
# tenant -> lines and tenant -> engine work in flight.
FAIR_PARTS = ("tenants", "batches:", "shards:", "waiting", "in_flight", "tenant_lines", "tenant_work")


def model_queue(model: str) -> str:
    """The Celery queue (a Redis list) of one model's shard tasks."""
    return f"model.{model}"


def batch(batch_id: str, part: str = "") -> str:
    """The batch's record, or one of its BATCH_PARTS."""
    assert part in ("", *BATCH_PARTS), part
    return f"{PREFIX}batch:{batch_id}" + (f":{part}" if part else "")


def batch_keys(batch_id: str) -> tuple[str, ...]:
    return batch(batch_id), *(batch(batch_id, part) for part in BATCH_PARTS)


def named(kind: str, name: str) -> str:
    """``pb:<kind>:<name>`` for kind in restore, preparing, worker, stats, latency, trigger."""
    assert kind in ("restore", "preparing", "worker", "stats", "latency", "trigger"), kind
    return f"{PREFIX}{kind}:{name}"


def listing(tenant: str, kind: str, part: str = "") -> str:
    """A tenant's listing of ``kind``: the sorted set of ids, or its ``records`` hash, or its ``built`` marker."""
    assert part in ("", "records", "built", "built:lock"), part
    return f"{PREFIX}list:{tenant}:{kind}" + (f":{part}" if part else "")


def fair(model: str, part: str) -> str:
    """One of the model's FAIR_PARTS (those ending in ':' are prefixes: append a tenant or a batch id)."""
    assert part in FAIR_PARTS, part
    return f"{PREFIX}fair:{model}:{part}"


QUOTA_PARTS = ("stored", "pending", "batches", "enqueued")
QUOTA_TENANTS = f"{PREFIX}quota:tenants"


def quota(tenant: str, part: str) -> str:
    """One of a tenant's QUOTA_PARTS (jobs/store/quotas.py)."""
    assert part in QUOTA_PARTS, part
    return f"{PREFIX}quota:{tenant}:{part}"


WEBHOOKS_DUE = f"{PREFIX}webhooks:due"
WEBHOOKS_PENDING = f"{PREFIX}webhooks:pending"


def webhook_done(event_id: str) -> str:
    """Marks a webhook event delivered (or given up) for a while (jobs/store/webhook_outbox.py)."""
    return f"{PREFIX}webhooks:done:{event_id}"


def idempotency(tenant: str, scope: str, digest: str) -> str:
    """One tenant's Idempotency-Key (by its digest) for one kind of create (jobs/store/idempotency.py)."""
    assert scope in ("files", "batches"), scope
    return f"{PREFIX}idem:{tenant}:{scope}:{digest}"


def estimate(estimate_id: str) -> str:
    return f"{PREFIX}estimate:{estimate_id}"


def estimate_queue(model: str) -> str:
    """Estimates waiting for a worker of ``model`` (jobs/pipeline/estimates.py)."""
    return f"{PREFIX}estimates:{model}"
