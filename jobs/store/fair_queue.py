"""Fair share between tenants, by work: shards wait in Redis and reach a model's queue in fair order.

A model's Celery queue is FIFO, so a 50,000-line batch sent there whole would hold back every
batch behind it. Instead prepare *enqueues* its shards here; :meth:`FairQueue.release` moves them
to the broker one at a time while fewer than ``window`` shards of the model are in flight (queued in
the broker or running). Each release goes to the tenant with the least *work* in flight (a shard's
work is what it may cost the engine, jobs/batch/cost.py: a line with n=128 weighs 128 lines), ties
going round-robin; within a tenant its batches take turns. A finished shard frees its place and
releases the next. A tenant may also be capped in lines in flight. Every step is one Lua script, so
concurrent releases never over-fill.

Shards are named by :class:`~pagebatch.jobs.batch.shard_ref.ShardRef` (``token`` = ``batch|index``).
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from pagebatch.jobs.batch.shard_ref import SHARD_HEADER, ShardKind, ShardRef, ShardTooNew
from pagebatch.jobs.logs import get_logger
from pagebatch.jobs.store import keys

log = get_logger(__name__)

# KEYS: tenants ring, waiting set, in-flight hash, the batch's shard list, the tenant's batch ring.
# ARGV: tenant, batch id, then ("batch|index", "index:lines:work:kind") pairs.
_ENQUEUE = """
local added = 0
for i = 3, #ARGV, 2 do
  local field = ARGV[i]
  if redis.call('HEXISTS', KEYS[3], field) == 0 and redis.call('SADD', KEYS[2], field) == 1 then
    redis.call('RPUSH', KEYS[4], ARGV[i + 1])
    added = added + 1
  end
end
if added > 0 then
  -- A newcomer goes to the head of the ring: among tenants with equal work in flight, it is served next.
  if redis.call('LPOS', KEYS[5], ARGV[2]) == false then redis.call('LPUSH', KEYS[5], ARGV[2]) end
  if redis.call('LPOS', KEYS[1], ARGV[1]) == false then redis.call('LPUSH', KEYS[1], ARGV[1]) end
end
return added
"""
# KEYS: tenants ring, waiting set, in-flight hash, tenant lines hash, tenant work hash.
# ARGV: window, max lines per tenant (0: none), now, batches-ring prefix, shards-list prefix.
_RELEASE = """
local tenants, waiting, inflight, tlines, twork = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window, maxlines = tonumber(ARGV[1]), tonumber(ARGV[2])
local released = {}
while redis.call('HLEN', inflight) < window do
  local best, bestwork, bestbatch, bestentry = nil, nil, nil, nil
  for _, tenant in ipairs(redis.call('LRANGE', tenants, 0, -1)) do
    local ring = ARGV[4] .. tenant
    local batch = redis.call('LINDEX', ring, 0)
    local entry = batch and redis.call('LINDEX', ARGV[5] .. batch, 0)
    while batch and not entry do  -- a batch with nothing waiting leaves its tenant's ring
      redis.call('LPOP', ring)
      batch = redis.call('LINDEX', ring, 0)
      entry = batch and redis.call('LINDEX', ARGV[5] .. batch, 0)
    end
    if not batch then
      redis.call('LREM', tenants, 0, tenant)
    else
      local lines = tonumber(string.match(entry, '^[^:]*:([^:]*):'))
      local used = tonumber(redis.call('HGET', tlines, tenant) or '0')
      if not (maxlines > 0 and used > 0 and used + lines > maxlines) then
        local work = tonumber(redis.call('HGET', twork, tenant) or '0')
        if best == nil or work < bestwork then
          best, bestwork, bestbatch, bestentry = tenant, work, batch, entry
        end
      end
    end
  end
  if best == nil then break end
  local index, lines, work, kind = string.match(bestentry, '^([^:]*):([^:]*):([^:]*):(.*)$')
  local shards = ARGV[5] .. bestbatch
  redis.call('LPOP', shards)
  local ring = ARGV[4] .. best
  redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')  -- the tenant's next release comes from its next batch
  if redis.call('LLEN', shards) == 0 then redis.call('LREM', ring, 0, bestbatch) end
  redis.call('LREM', tenants, 0, best)
  if redis.call('LLEN', ring) > 0 then redis.call('RPUSH', tenants, best) end  -- ties go round-robin
  local field = bestbatch .. '|' .. index
  redis.call('SREM', waiting, field)
  redis.call('HSET', inflight, field, table.concat({best, lines, work, '0', ARGV[3], kind}, '|'))
  redis.call('HINCRBY', tlines, best, lines)
  redis.call('HINCRBY', twork, best, work)
  table.insert(released, field)
end
return released
"""
# KEYS: in-flight hash. ARGV: field, sent flag, released-at (empty: keep).
_MARK = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local tenant, lines, work, _, at, kind = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
if ARGV[3] ~= '' then at = ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], table.concat({tenant, lines, work, ARGV[2], at, kind}, '|'))
return 1
"""
# KEYS: in-flight hash, tenant lines hash, tenant work hash. ARGV: field.
_DONE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local tenant, lines, work = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|')
if redis.call('HINCRBY', KEYS[2], tenant, -tonumber(lines)) <= 0 then redis.call('HDEL', KEYS[2], tenant) end
if redis.call('HINCRBY', KEYS[3], tenant, -tonumber(work)) <= 0 then redis.call('HDEL', KEYS[3], tenant) end
return 1
"""

Send = Callable[[ShardRef, str], None]  # (shard, model): put the shard's task on the broker


@dataclass(frozen=True)
class ShardLoad:
    """What a shard weighs: its lines (for the per-tenant line cap) and its engine work (for fair share)."""

    lines: int
    work: int


@dataclass(frozen=True)
class InFlight:
    ref: ShardRef
    lines: int
    work: int
    sent: bool
    released_at: float


class FairQueue:
    def __init__(self, client: redis.Redis, send: Send, window: int, tenant_max_lines: int = 0) -> None:
        self.client, self.send, self.window, self.tenant_max_lines = client, send, window, tenant_max_lines
        self._enqueue = client.register_script(_ENQUEUE)
        self._release = client.register_script(_RELEASE)
        self._mark = client.register_script(_MARK)
        self._done = client.register_script(_DONE)

    def enqueue(self, model: str, shards: Iterable[tuple[ShardRef, ShardLoad]]) -> int:
        """Queue shards of one batch, skipping any already waiting or in flight; then release what fits."""
        shards = list(shards)
        if not shards:
            return 0
        first = shards[0][0]
        args: list[str | int] = [first.tenant, first.batch_id]
        for ref, load in shards:
            assert (ref.batch_id, ref.tenant) == (first.batch_id, first.tenant), "one batch per call"
            args += [ref.token, f"{ref.index}:{load.lines}:{load.work}:{ref.kind}"]
        added = self._enqueue(keys=[keys.fair(model, "tenants"), keys.fair(model, "waiting"),
                                    keys.fair(model, "in_flight"), keys.fair(model, "shards:") + first.batch_id,
                                    keys.fair(model, "batches:") + first.tenant], args=args)
        self.release(model)
        return int(added)

    def release(self, model: str) -> int:
        """Send waiting shards to the broker while the model has room; returns how many were sent."""
        fields = self._release(
            keys=[keys.fair(model, "tenants"), keys.fair(model, "waiting"), keys.fair(model, "in_flight"),
                  keys.fair(model, "tenant_lines"), keys.fair(model, "tenant_work")],
            args=[self.window, self.tenant_max_lines, time.time(), keys.fair(model, "batches:"),
                  keys.fair(model, "shards:")])
        for field in fields:
            self._send(model, field)
        return len(fields)

    def done(self, model: str, ref: ShardRef) -> None:
        """A shard task finished (whatever its outcome): free its place and release the next."""
        self._done(keys=[keys.fair(model, "in_flight"), keys.fair(model, "tenant_lines"),
                         keys.fair(model, "tenant_work")], args=[ref.token])
        self.release(model)

    def in_flight(self, model: str) -> list[InFlight]:
        out = []
        for field, value in self.client.hgetall(keys.fair(model, "in_flight")).items():
            item = _in_flight(field, value)
            if item is not None:
                out.append(item)
        return out

    def waiting(self, model: str) -> int:
        return int(self.client.scard(keys.fair(model, "waiting")))

    def work_in_flight(self, model: str) -> dict[str, int]:
        """tenant -> engine work of its shards in flight."""
        return {t: int(w) for t, w in self.client.hgetall(keys.fair(model, "tenant_work")).items()}

    def resend_unsent(self, model: str, older_than_s: float) -> int:
        """Shards released but never sent (the releasing process died in between): send them now."""
        now = time.time()
        stale = [f for f in self.in_flight(model) if not f.sent and now - f.released_at > older_than_s]
        for item in stale:
            self._send(model, item.ref.token)
        return len(stale)

    def resend_lost(self, model: str, older_than_s: float, task_name: str, is_done: Callable[[ShardRef], bool]) -> int:
        """Shards sent long ago whose message is neither queued nor delivered (a broker that died between
        popping a message and recording it unacked loses it): free the place of those done, send the rest again.

        If any shard message there cannot be identified, nothing is re-sent this time: a lost shard waits a
        sweep longer rather than every shard in flight being sent twice."""
        now = time.time()
        stale = [f for f in self.in_flight(model) if f.sent and now - f.released_at > older_than_s]
        if not stale:
            return 0
        present, unknown = _queued_shards(self.client, model, task_name)
        if unknown:
            log.error("shard messages that name no shard are queued; not re-sending lost shards this sweep",
                      model=model, messages=unknown)
            return 0
        resent = 0
        for item in stale:
            if item.ref.token in present:
                continue
            if is_done(item.ref):
                self.done(model, item.ref)
                continue
            self._mark(keys=[keys.fair(model, "in_flight")], args=[item.ref.token, "1", now])
            self._send(model, item.ref.token)
            resent += 1
        return resent

    def _send(self, model: str, field: str) -> None:
        value = self.client.hget(keys.fair(model, "in_flight"), field)
        item = None if value is None else _in_flight(field, value)
        if item is None:
            return  # finished already
        self.send(item.ref, model)
        self._mark(keys=[keys.fair(model, "in_flight")], args=[field, "1", ""])


def _in_flight(field: str, value: str) -> InFlight | None:
    batch_id, _, index = field.rpartition("|")
    parts = value.split("|")
    if len(parts) != 6:
        log.error("an in-flight shard entry of an unknown shape is ignored", field=field, value=value[:200])
        return None
    tenant, lines, work, sent, at, kind = parts
    return InFlight(ShardRef(batch_id, tenant, int(index), ShardKind(kind)), int(lines), int(work), sent == "1",
                    float(at))


def _queued_shards(client: redis.Redis, model: str, task_name: str) -> tuple[set[str], int]:
    """The tokens of every shard task message queued for the model or delivered and not acked, and how many
    shard task messages named no shard that could be read."""
    raws = [json.loads(m) for m in client.lrange(keys.model_queue(model), 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals(keys.UNACKED)]
    found: set[str] = set()
    unknown = 0
    for message in raws:
        headers = message.get("headers", {}) if isinstance(message, dict) else {}
        if headers.get("task") != task_name:
            continue
        token = headers.get(SHARD_HEADER)
        if isinstance(token, str):
            found.add(token)
            continue
        try:  # a message sent before shards were named in a header: its arguments name it
            found.add(ShardRef.from_task_args(json.loads(base64.b64decode(message["body"]))[0]).token)
        except (KeyError, IndexError, TypeError, ValueError, ShardTooNew):
            unknown += 1
    return found, unknown
