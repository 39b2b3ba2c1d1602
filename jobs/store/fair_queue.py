"""Fair share between tenants: shards wait in Redis and reach a model's queue round-robin.

A model's Celery queue is FIFO, so a 50,000-line batch sent there whole would hold back every
batch behind it. Instead prepare *enqueues* its shards here; :meth:`FairQueue.release` moves them
to the broker one at a time, rotating over the tenants with waiting work (and, within a tenant,
over its batches), while fewer than ``window`` shards of the model are in flight (queued in the
broker or running). A finished shard frees its place and releases the next. A tenant may also be
capped in lines in flight. Every step is one Lua script, so concurrent releases never over-fill.
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from pagebatch.jobs.store import keys

# KEYS: tenants ring, waiting set, in-flight hash, the batch's shard list, the tenant's batch ring.
# ARGV: tenant, batch id, then ("batch|index", index, lines) triplets.
_ENQUEUE = """
local added = 0
for i = 3, #ARGV, 3 do
  local field = ARGV[i]
  if redis.call('HEXISTS', KEYS[3], field) == 0 and redis.call('SADD', KEYS[2], field) == 1 then
    redis.call('RPUSH', KEYS[4], ARGV[i + 1] .. ':' .. ARGV[i + 2])
    added = added + 1
  end
end
if added > 0 then
  -- A newcomer goes to the head of the ring: its first shard is the next one released.
  if redis.call('LPOS', KEYS[5], ARGV[2]) == false then redis.call('LPUSH', KEYS[5], ARGV[2]) end
  if redis.call('LPOS', KEYS[1], ARGV[1]) == false then redis.call('LPUSH', KEYS[1], ARGV[1]) end
end
return added
"""
# KEYS: tenants ring, waiting set, in-flight hash, tenant lines hash.
# ARGV: window, max lines per tenant (0: none), now, batches-ring prefix, shards-list prefix.
_RELEASE = """
local tenants, waiting, inflight, tlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, maxlines = tonumber(ARGV[1]), tonumber(ARGV[2])
local released = {}
local skipped = 0
while redis.call('HLEN', inflight) < window do
  local count = redis.call('LLEN', tenants)
  if count == 0 or skipped >= count then break end
  local tenant = redis.call('LMOVE', tenants, tenants, 'LEFT', 'RIGHT')
  local ring = ARGV[4] .. tenant
  local batch = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  local entry = batch and redis.call('LINDEX', ARGV[5] .. batch, 0)
  if not entry then
    if batch then redis.call('LREM', ring, 0, batch) end
    if redis.call('LLEN', ring) == 0 then redis.call('LREM', tenants, 0, tenant) end
  else
    local sep = string.find(entry, ':', 1, true)
    local lines = tonumber(string.sub(entry, sep + 1))
    local used = tonumber(redis.call('HGET', tlines, tenant) or '0')
    if maxlines > 0 and used > 0 and used + lines > maxlines then
      skipped = skipped + 1
    else
      skipped = 0
      local shards = ARGV[5] .. batch
      redis.call('LPOP', shards)
      local field = batch .. '|' .. string.sub(entry, 1, sep - 1)
      redis.call('SREM', waiting, field)
      redis.call('HSET', inflight, field, tenant .. '|' .. lines .. '|0|' .. ARGV[3])
      redis.call('HINCRBY', tlines, tenant, lines)
      table.insert(released, field)
      if redis.call('LLEN', shards) == 0 then
        redis.call('LREM', ring, 0, batch)
        if redis.call('LLEN', ring) == 0 then redis.call('LREM', tenants, 0, tenant) end
      end
    end
  end
end
return released
"""
_MARK_SENT = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local tenant, lines, _, at = string.match(value, '([^|]*)|([^|]*)|([^|]*)|([^|]*)')
redis.call('HSET', KEYS[1], ARGV[1], tenant .. '|' .. lines .. '|1|' .. at)
return 1
"""
_DONE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local tenant, lines = string.match(value, '([^|]*)|([^|]*)|')
if redis.call('HINCRBY', KEYS[2], tenant, -tonumber(lines)) <= 0 then redis.call('HDEL', KEYS[2], tenant) end
return 1
"""

Send = Callable[[str, str, int, str], None]  # (batch_id, tenant, shard, model): put the shard task on the broker


@dataclass(frozen=True)
class InFlight:
    batch_id: str
    shard: int
    tenant: str
    lines: int
    sent: bool
    released_at: float


class FairQueue:
    def __init__(self, client: redis.Redis, send: Send, window: int, tenant_max_lines: int = 0) -> None:
        self.client, self.send, self.window, self.tenant_max_lines = client, send, window, tenant_max_lines
        self._enqueue = client.register_script(_ENQUEUE)
        self._release = client.register_script(_RELEASE)
        self._mark_sent = client.register_script(_MARK_SENT)
        self._done = client.register_script(_DONE)

    def enqueue(self, model: str, tenant: str, batch_id: str, shards: Iterable[tuple[int, int]]) -> int:
        """Queue (shard index, lines) pairs of one batch, skipping any already waiting or in flight."""
        args: list[str | int] = [tenant, batch_id]
        for index, lines in shards:
            args += [f"{batch_id}|{index}", index, lines]
        if len(args) == 2:
            return 0
        added = self._enqueue(keys=[keys.fair(model, "tenants"), keys.fair(model, "waiting"), keys.fair(model, "in_flight"),
                                    keys.fair(model, "shards:") + batch_id,
                                    keys.fair(model, "batches:") + tenant], args=args)
        self.release(model)
        return int(added)

    def release(self, model: str) -> int:
        """Send waiting shards to the broker while the model has room; returns how many were sent."""
        fields = self._release(
            keys=[keys.fair(model, "tenants"), keys.fair(model, "waiting"), keys.fair(model, "in_flight"),
                  keys.fair(model, "tenant_lines")],
            args=[self.window, self.tenant_max_lines, time.time(), keys.fair(model, "batches:"),
                  keys.fair(model, "shards:")])
        for field in fields:
            self._send(model, field)
        return len(fields)

    def done(self, model: str, batch_id: str, shard: int) -> None:
        """A shard task finished (whatever its outcome): free its place and release the next."""
        self._done(keys=[keys.fair(model, "in_flight"), keys.fair(model, "tenant_lines")], args=[f"{batch_id}|{shard}"])
        self.release(model)

    def in_flight(self, model: str) -> list[InFlight]:
        out = []
        for field, value in self.client.hgetall(keys.fair(model, "in_flight")).items():
            batch_id, _, index = field.rpartition("|")
            tenant, lines, sent, at = value.split("|")
            out.append(InFlight(batch_id, int(index), tenant, int(lines), sent == "1", float(at)))
        return out

    def waiting(self, model: str) -> int:
        return int(self.client.scard(keys.fair(model, "waiting")))

    def resend_unsent(self, model: str, older_than_s: float) -> int:
        """Shards released but never sent (the releasing process died in between): send them now."""
        now = time.time()
        stale = [f for f in self.in_flight(model) if not f.sent and now - f.released_at > older_than_s]
        for item in stale:
            self._send(model, f"{item.batch_id}|{item.shard}")
        return len(stale)

    def resend_lost(self, model: str, older_than_s: float, task_name: str, is_done: Callable[[str, int], bool]) -> int:
        """Shards sent long ago whose message is neither queued nor delivered (a broker that died between
        popping a message and recording it unacked loses it): free the place of those done, send the rest again."""
        now = time.time()
        stale = [f for f in self.in_flight(model) if f.sent and now - f.released_at > older_than_s]
        if not stale:
            return 0
        present = _queued_shards(self.client, model, task_name)
        resent = 0
        for item in stale:
            if (item.batch_id, item.shard) in present:
                continue
            if is_done(item.batch_id, item.shard):
                self.done(model, item.batch_id, item.shard)
                continue
            self._send(model, f"{item.batch_id}|{item.shard}")
            self.client.hset(keys.fair(model, "in_flight"), f"{item.batch_id}|{item.shard}",
                             f"{item.tenant}|{item.lines}|1|{now}")
            resent += 1
        return resent

    def _send(self, model: str, field: str) -> None:
        batch_id, _, index = field.rpartition("|")
        tenant = self.client.hget(keys.fair(model, "in_flight"), field)
        if tenant is None:
            return  # finished already
        self.send(batch_id, tenant.split("|", 1)[0], int(index), model)
        self._mark_sent(keys=[keys.fair(model, "in_flight")], args=[field])


def _queued_shards(client: redis.Redis, model: str, task_name: str) -> set[tuple[str, int]]:
    """(batch id, shard) of every shard task message waiting in the model's queue or delivered and not acked."""
    raws = [json.loads(m) for m in client.lrange(keys.model_queue(model), 0, -1)]
    raws += [json.loads(v)[0] for v in client.hvals(keys.UNACKED)]
    found = set()
    for message in raws:
        if not isinstance(message, dict) or message.get("headers", {}).get("task") != task_name:
            continue
        try:
            args = json.loads(base64.b64decode(message["body"]))[0]
            found.add((args[0], int(args[2])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return found
