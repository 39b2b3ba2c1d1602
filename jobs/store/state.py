"""Live batch state in Redis, with a durable copy (batch.json) in storage.

Per batch (see jobs/store/keys.py): the record with a version, and its shards' record (which are done,
their counts and attempts: jobs/store/shard_ledger.py). Status changes are lifecycle events
(jobs/batch/lifecycle.py) applied in compare-and-set transactions; each one is followed by a write of
batch.json. The transaction that ends a batch also frees what it held of its tenant's quota.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import redis

from pagebatch.jobs.batch import lifecycle
from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.schema import BatchRecord, RequestCounts
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.listing import TenantListing
from pagebatch.jobs.store.metrics import record_status
from pagebatch.jobs.store.quotas import TenantQuotas
from pagebatch.jobs.store.shard_ledger import ShardLedger
from pagebatch.jobs.store.storage import NotFound, Storage

def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10,
        retry_on_timeout=True,
    )


class BatchState:
    def __init__(self, client: redis.Redis, storage: Storage, ttl_s: int = 7 * 24 * 3600,
                 quotas: TenantQuotas | None = None) -> None:
        self.r = client
        self.storage = storage
        self.ttl_s = ttl_s
        self.quotas = quotas or TenantQuotas(client)  # a batch's end frees what it held, in the same transaction
        self.shards = ShardLedger(client)  # which shards are done, their counts and attempts
        self.listing = TenantListing(client, "batches", self._stored_ids)

    # --- records -----------------------------------------------------------------------------
    def create(self, record: BatchRecord) -> None:
        """Live state, then the durable copy and the active marker that make a later Redis loss recoverable.

        In this order the recovery sweeper never sees a marker for a batch that is merely not live yet.
        """
        self.listing.ensure_built(record.tenant)  # a new tenant's index is complete from its first batch on
        self.load_live(record)
        self.persist(record)
        self.storage.put_bytes(layout.active_marker(record.id), record.tenant.encode())
        self.listing.add(record.tenant, record.id)

    def list(self, tenant: str, *, after: str | None, limit: int, order: str = "desc"
             ) -> tuple[list[BatchRecord], bool]:
        page, has_more = self.listing.page(tenant, after=after, limit=limit, order=order)
        records = [record for batch_id, _ in page if (record := self.get(tenant, batch_id)) is not None]
        return records, has_more

    def _stored_ids(self, tenant: str) -> Iterable[tuple[str, None]]:
        prefix = layout.batches_prefix(tenant)
        for key in self.storage.list(prefix):
            yield key.removeprefix(prefix).removesuffix(".json"), None

    def load_live(self, record: BatchRecord, finished: dict[int, tuple[int, int]] | None = None) -> None:
        """The live record, and the shards already finished (index -> (completed, failed)) when restoring one."""
        pipe = self.r.pipeline()
        pipe.hset(keys.batch(record.id), mapping={"record": record.model_dump_json(), "version": 1})
        if not lifecycle.is_terminal(record.status):
            record_status(pipe, record.id, None, record.status)
            self.quotas.batch_in_flight(pipe, record.tenant, record.id)
        self.shards.restore(pipe, record.id, finished or {})
        pipe.execute()

    def exists_live(self, batch_id: str) -> bool:
        return bool(self.r.exists(keys.batch(batch_id)))

    def get_live(self, batch_id: str) -> BatchRecord | None:
        raw = self.r.hget(keys.batch(batch_id), "record")
        return None if raw is None else BatchRecord.model_validate_json(raw)

    def get_durable(self, tenant: str, batch_id: str) -> BatchRecord | None:
        try:
            return BatchRecord.model_validate_json(self.storage.get_bytes(layout.batch_json(tenant, batch_id)))
        except NotFound:
            return None

    def get(self, tenant: str, batch_id: str) -> BatchRecord | None:
        """The batch as a user sees it now: live state with progress, else the durable copy."""
        try:
            record = self.get_live(batch_id)
        except redis.RedisError:
            record = None
        if record is None:
            record = self.get_durable(tenant, batch_id)
        if record is None or record.tenant != tenant:
            return None
        if not lifecycle.is_terminal(record.status):
            try:
                record.request_counts = self.live_counts(record)
            except redis.RedisError:
                pass
        return record

    def live_counts(self, record: BatchRecord) -> RequestCounts:
        """The batch's counts while it runs: lines rejected at validation, and what its shards counted so far."""
        completed, failed = self.shards.counts(record.id)
        return RequestCounts(total=record.request_counts.total, completed=completed, failed=record.rejected + failed)

    def persist(self, record: BatchRecord) -> None:
        self.storage.put_bytes(layout.batch_json(record.tenant, record.id), record.model_dump_json(indent=1).encode())

    # --- transitions -------------------------------------------------------------------------
    def update(
        self, batch_id: str, change: Callable[[BatchRecord], bool], *, persist: bool = True
    ) -> tuple[bool, BatchRecord | None]:
        """Apply ``change`` atomically (optimistic WATCH/MULTI); it returns False to leave the record alone."""
        key = keys.batch(batch_id)
        outcome: dict[str, object] = {"changed": False, "record": None}

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(key, "record")
            outcome["changed"], outcome["record"] = False, None
            if raw is None:
                return
            record = BatchRecord.model_validate_json(raw)
            outcome["record"] = record
            before = record.status
            if not change(record):
                return
            pipe.multi()
            pipe.hset(key, "record", record.model_dump_json())
            pipe.hincrby(key, "version", 1)
            record_status(pipe, batch_id, before, record.status)
            if lifecycle.is_terminal(record.status):
                for name in keys.batch_keys(batch_id):
                    pipe.expire(name, self.ttl_s)
                self.quotas.batch_ended(pipe, record.tenant, batch_id)
            outcome["changed"] = True

        self.r.transaction(txn, key)
        record = outcome["record"]
        if outcome["changed"] and persist and record is not None:
            self._persist_latest(batch_id)
        return bool(outcome["changed"]), record  # type: ignore[return-value]

    def transition(
        self, batch_id: str, event: Event, edit: Callable[[BatchRecord], bool | None] | None = None
    ) -> tuple[bool, BatchRecord | None]:
        """Apply a lifecycle event atomically; ``edit`` may change the record too, or return False to veto."""

        def change(record: BatchRecord) -> bool:
            if not lifecycle.allowed(record.status, event):
                return False
            if edit is not None and edit(record) is False:
                return False
            return lifecycle.apply(record, event)

        return self.update(batch_id, change)

    def _persist_latest(self, batch_id: str) -> None:
        # Two writers can race; rewrite until the copy we wrote is the newest version.
        for _ in range(5):
            version = self.r.hget(keys.batch(batch_id), "version")
            record = self.get_live(batch_id)
            if record is None:
                return
            self.persist(record)
            if self.r.hget(keys.batch(batch_id), "version") == version:
                return

    def forget_active(self, batch_id: str) -> None:
        self.storage.delete(layout.active_marker(batch_id))

