"""Live batch state in Redis, with a durable copy (batch.json) in storage.

Redis keys per batch: ``pb:batch:<id>`` (hash: the record JSON, a version), ``…:progress``
(hash: shard -> {"completed", "failed"}, overwritten, never incremented, so a re-run shard cannot
double-count), ``…:done`` (set of shards whose results are in storage) and ``…:attempts``.
Status changes are compare-and-set transactions; each one is followed by a write of batch.json.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import redis

from jobs import layout
from jobs.metrics import record_status
from jobs.schema import TERMINAL_STATUSES, BatchRecord, RequestCounts
from jobs.storage import NotFound, Storage

_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return redis.call('SCARD', KEYS[3])
"""
_SET_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10,
        retry_on_timeout=True,
    )


def _key(batch_id: str, part: str = "") -> str:
    return f"pb:batch:{batch_id}" + (f":{part}" if part else "")


class BatchState:
    def __init__(self, client: redis.Redis, storage: Storage, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.storage = storage
        self.ttl_s = ttl_s
        self._mark_done = client.register_script(_MARK_DONE)
        self._set_progress = client.register_script(_SET_PROGRESS)

    # --- records -----------------------------------------------------------------------------
    def create(self, record: BatchRecord) -> None:
        """Live state, then the durable copy and the active marker that make a later Redis loss recoverable.

        In this order the recovery sweeper never sees a marker for a batch that is merely not live yet.
        """
        self.load_live(record)
        self.persist(record)
        self.storage.put_bytes(layout.active_marker(record.id), record.tenant.encode())

    def load_live(self, record: BatchRecord, progress: dict[str, str] | None = None, done: Iterable[str] = ()) -> None:
        pipe = self.r.pipeline()
        pipe.hset(_key(record.id), mapping={"record": record.model_dump_json(), "version": 1})
        if record.status not in TERMINAL_STATUSES:
            record_status(pipe, record.id, None, record.status)
        if progress:
            pipe.hset(_key(record.id, "progress"), mapping=progress)
        done = list(done)
        if done:
            pipe.sadd(_key(record.id, "done"), *done)
        pipe.execute()

    def exists_live(self, batch_id: str) -> bool:
        return bool(self.r.exists(_key(batch_id)))

    def get_live(self, batch_id: str) -> BatchRecord | None:
        raw = self.r.hget(_key(batch_id), "record")
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
        if record.status not in TERMINAL_STATUSES:
            try:
                record.request_counts = self.live_counts(batch_id, record.request_counts.total)
            except redis.RedisError:
                pass
        return record

    def live_counts(self, batch_id: str, total: int) -> RequestCounts:
        completed = failed = 0
        for raw in self.r.hvals(_key(batch_id, "progress")):
            p = json.loads(raw)
            completed += p["completed"]
            failed += p["failed"]
        return RequestCounts(total=total, completed=completed, failed=failed)

    def persist(self, record: BatchRecord) -> None:
        self.storage.put_bytes(layout.batch_json(record.tenant, record.id), record.model_dump_json(indent=1).encode())

    # --- transitions -------------------------------------------------------------------------
    def update(
        self, batch_id: str, change: Callable[[BatchRecord], bool], *, persist: bool = True
    ) -> tuple[bool, BatchRecord | None]:
        """Apply ``change`` atomically (optimistic WATCH/MULTI); it returns False to leave the record alone."""
        key = _key(batch_id)
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
            if record.status in TERMINAL_STATUSES:
                for part in ("", "progress", "done", "attempts"):
                    pipe.expire(_key(batch_id, part), self.ttl_s)
            outcome["changed"] = True

        self.r.transaction(txn, key)
        record = outcome["record"]
        if outcome["changed"] and persist and record is not None:
            self._persist_latest(batch_id)
        return bool(outcome["changed"]), record  # type: ignore[return-value]

    def transition(
        self, batch_id: str, allowed_from: Iterable[str], to: str, edit: Callable[[BatchRecord], None] | None = None
    ) -> tuple[bool, BatchRecord | None]:
        allowed = set(allowed_from)

        def change(record: BatchRecord) -> bool:
            if record.status not in allowed:
                return False
            record.status = to  # type: ignore[assignment]
            setattr(record, f"{to}_at", int(time.time()))
            if edit is not None:
                edit(record)
            return True

        return self.update(batch_id, change)

    def _persist_latest(self, batch_id: str) -> None:
        # Two writers can race; rewrite until the copy we wrote is the newest version.
        for _ in range(5):
            version = self.r.hget(_key(batch_id), "version")
            record = self.get_live(batch_id)
            if record is None:
                return
            self.persist(record)
            if self.r.hget(_key(batch_id), "version") == version:
                return

    # --- shards --------------------------------------------------------------------------------
    def set_progress(self, batch_id: str, shard: str, completed: int, failed: int) -> None:
        payload = json.dumps({"completed": completed, "failed": failed})
        keys = [_key(batch_id), _key(batch_id, "progress"), _key(batch_id, "done")]
        self._set_progress(keys=keys, args=[shard, payload])

    def mark_done(self, batch_id: str, shard: str, completed: int, failed: int) -> int:
        """Record a shard as finished (once); returns how many shards are done, or -1 if the batch is not live."""
        payload = json.dumps({"completed": completed, "failed": failed})
        keys = [_key(batch_id), _key(batch_id, "progress"), _key(batch_id, "done")]
        return int(self._mark_done(keys=keys, args=[shard, payload]))

    def is_done(self, batch_id: str, shard: str) -> bool:
        return bool(self.r.sismember(_key(batch_id, "done"), shard))

    def count_attempt(self, batch_id: str, shard: str) -> int:
        return int(self.r.hincrby(_key(batch_id, "attempts"), shard, 1))

    def forget_active(self, batch_id: str) -> None:
        self.storage.delete(layout.active_marker(batch_id))


def register_model(client: redis.Redis, name: str, worker: str, ttl_s: int) -> None:
    pipe = client.pipeline()
    pipe.sadd("pb:models", name)
    pipe.set(f"pb:worker:{worker}", name, ex=ttl_s)
    pipe.execute()


def known_models(client: redis.Redis) -> set[str]:
    return set(client.smembers("pb:models"))


def live_workers(client: redis.Redis) -> dict[str, str]:
    keys = list(client.scan_iter("pb:worker:*"))
    values = client.mget(keys) if keys else []
    return {k.removeprefix("pb:worker:"): v for k, v in zip(keys, values, strict=True) if v is not None}
