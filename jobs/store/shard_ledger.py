"""The one record of a batch's shards in Redis: which are done, what each counted, how often each ran.

"Done" means the shard's results are in storage. It is one set per batch (``pb:batch:<id>:done``),
written only by :meth:`ShardLedger.mark_done`, together with the shard's final counts, in one script;
so a shard counts once however often it runs. :meth:`ShardLedger.done` is how anything asks which shards
are done (finalize, recovery, the deadline sweep, results read while a batch runs). Storage holds the
durable truth (a shard's result object), from which recovery rebuilds this record after Redis lost it.

Batches prepared before this record existed hold a ``"prepare"`` member; it is not a shard, and is ignored.
"""
from __future__ import annotations

import json

import redis

from pagebatch.jobs.batch.shard_ref import ShardRef
from pagebatch.jobs.store import keys

_LEGACY_MEMBER = "prepare"

# KEYS: record, progress, done. ARGV: shard, counts. -1 when the batch is not live, else the shards done.
_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return redis.call('SCARD', KEYS[3]) - redis.call('SISMEMBER', KEYS[3], ARGV[3])
"""
# Progress of a running shard; never over a done shard's final counts.
_SET_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


class ShardLedger:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._mark_done = client.register_script(_MARK_DONE)
        self._set_progress = client.register_script(_SET_PROGRESS)

    @staticmethod
    def _keys(batch_id: str) -> list[str]:
        return [keys.batch(batch_id), keys.batch(batch_id, "progress"), keys.batch(batch_id, "done")]

    def mark_done(self, ref: ShardRef, completed: int, failed: int) -> int:
        """Record the shard done with its final counts (once); how many shards are done, or -1 if the batch
        is not live (Redis lost it: recovery rebuilds the record from storage)."""
        payload = json.dumps({"completed": completed, "failed": failed})
        return int(self._mark_done(keys=self._keys(ref.batch_id), args=[str(ref.index), payload, _LEGACY_MEMBER]))

    def record_progress(self, ref: ShardRef, completed: int, failed: int) -> None:
        payload = json.dumps({"completed": completed, "failed": failed})
        self._set_progress(keys=self._keys(ref.batch_id), args=[str(ref.index), payload])

    def done(self, batch_id: str) -> frozenset[int]:
        """The indexes of the batch's shards whose results are in storage."""
        return frozenset(int(m) for m in self.r.smembers(keys.batch(batch_id, "done")) if m.isdigit())

    def is_done(self, ref: ShardRef) -> bool:
        return bool(self.r.sismember(keys.batch(ref.batch_id, "done"), str(ref.index)))

    def count_attempt(self, ref: ShardRef) -> int:
        """Count one more run of the shard; returns the runs so far, this one included."""
        return int(self.r.hincrby(keys.batch(ref.batch_id, "attempts"), str(ref.index), 1))

    def counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) over the batch's shards: final counts of done ones, progress of running ones."""
        completed = failed = 0
        for raw in self.r.hvals(keys.batch(batch_id, "progress")):
            p = json.loads(raw)
            completed += p["completed"]
            failed += p["failed"]
        return completed, failed

    def restore(self, pipe: redis.client.Pipeline, batch_id: str, finished: dict[int, tuple[int, int]]) -> None:
        """Queue on ``pipe`` the record of shards found finished in storage (index -> (completed, failed))."""
        if not finished:
            return
        pipe.hset(keys.batch(batch_id, "progress"), mapping={
            str(i): json.dumps({"completed": c, "failed": f}) for i, (c, f) in finished.items()})
        pipe.sadd(keys.batch(batch_id, "done"), *(str(i) for i in finished))
