"""Per-tenant usage in Redis, checked against the tenant's quotas (jobs/settings.py ``Quota``) atomically.

What is counted, and when it is freed:

- bytes and files stored: an upload reserves its size before it is written (a reservation lapses after an
  hour, so an API that died mid-upload leaks nothing); it is committed with the file's index entry, and
  freed when the file is deleted or expires. Batch results count too, but are never refused: their work
  was accepted already.
- batches in flight: added when a batch is created, freed in the same transaction that ends it.
- lines and tokens enqueued, per model: reserved when a batch is validated (its manifest's sums), freed in
  the transaction that ends it.

Every check and reservation is one Lua script, so concurrent requests cannot together pass a quota. A
refusal raises :class:`QuotaExceeded`, naming the quota, the limit and the usage. Usage lost with Redis is
rebuilt: stored files with the tenant's file index (jobs/store/files.py), batches when recovery restores them.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import redis

from pagebatch.jobs.errors import ErrorKind, JobError
from pagebatch.jobs.settings import Quota
from pagebatch.jobs.store import keys

RESERVATION_S = 3600  # an upload's reservation lapses after this, if the upload neither stored nor gave it back

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1])\n"

# KEYS: stored hash, pending zset, tenants set. ARGV: reservation id, size, max bytes, max files, ttl, tenant.
_RESERVE_UPLOAD = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local files = tonumber(redis.call('HGET', KEYS[1], 'files') or '0')
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  bytes = bytes + tonumber(string.match(member, '|(%d+)$'))
  files = files + 1
end
local size, maxbytes, maxfiles = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if maxbytes > 0 and bytes + size > maxbytes then return {'bytes', bytes, files} end
if maxfiles > 0 and files + 1 > maxfiles then return {'files', bytes, files} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1] .. '|' .. ARGV[2])
redis.call('SADD', KEYS[3], ARGV[6])
return {'', bytes, files}
"""
# KEYS: batches set, tenants set. ARGV: batch id, max, tenant. -1 when admitted, else the batches in flight.
_ADMIT_BATCH = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return -1 end
local n = redis.call('SCARD', KEYS[1])
if tonumber(ARGV[2]) > 0 and n >= tonumber(ARGV[2]) then return n end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return -1
"""
# KEYS: enqueued hash, tenants set. ARGV: batch id, {model: [lines, tokens]} (JSON), max lines, max tokens, tenant.
# The batch's own earlier reservation (a redelivered prepare) is not counted against it.
_RESERVE_ENQUEUED = """
local mine = cjson.decode(ARGV[2])
local used = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    for model, v in pairs(cjson.decode(all[i + 1])) do
      local u = used[model] or {0, 0}
      used[model] = {u[1] + v[1], u[2] + v[2]}
    end
  end
end
local maxlines, maxtokens = tonumber(ARGV[3]), tonumber(ARGV[4])
for model, v in pairs(mine) do
  local u = used[model] or {0, 0}
  if maxlines > 0 and u[1] + v[1] > maxlines then return {'lines', model, u[1], u[2]} end
  if maxtokens > 0 and u[2] + v[2] > maxtokens then return {'tokens', model, u[1], u[2]} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
return {''}
"""


class QuotaExceeded(JobError):
    """A request the tenant's quota does not allow; the message names the quota, its limit and the usage."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message, ErrorKind.QUOTA, code=code, param=param)


@dataclass
class TenantUsage:
    bytes: int = 0
    files: int = 0
    pending_uploads: int = 0  # uploads reserved and not stored yet
    batches_in_flight: int = 0
    enqueued: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (lines, tokens)


class TenantQuotas:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._reserve_upload = client.register_script(_RESERVE_UPLOAD)
        self._admit_batch = client.register_script(_ADMIT_BATCH)
        self._reserve_enqueued = client.register_script(_RESERVE_ENQUEUED)

    # --- files -----------------------------------------------------------------------------------
    def reserve_upload(self, tenant: str, size: int, quota: Quota) -> str:
        """Reserve room for an upload of ``size`` bytes; its reservation id, or QuotaExceeded."""
        reservation = uuid.uuid4().hex
        which, used_bytes, used_files = self._reserve_upload(
            keys=[keys.quota(tenant, "stored"), keys.quota(tenant, "pending"), keys.QUOTA_TENANTS],
            args=[reservation, size, quota.bytes, quota.files, RESERVATION_S, tenant])
        if which == "bytes":
            raise QuotaExceeded(
                f"Storage quota exceeded: this tenant stores {int(used_bytes):,} of {quota.bytes:,} bytes allowed "
                f"(uploads in progress included), and this file has {size:,} bytes. Delete files you no longer need "
                "(DELETE /v1/files/{id}) or ask for a larger quota.", "storage_quota_exceeded", "file")
        if which == "files":
            raise QuotaExceeded(
                f"File quota exceeded: this tenant stores {int(used_files):,} of {quota.files:,} files allowed. "
                "Delete files you no longer need (DELETE /v1/files/{id}) or ask for a larger quota.",
                "file_quota_exceeded", "file")
        return reservation

    def release_upload(self, tenant: str, reservation: str, size: int) -> None:
        """An upload that was not stored gives its reservation back."""
        self.r.zrem(keys.quota(tenant, "pending"), f"{reservation}|{size}")

    def file_stored(self, pipe: redis.client.Pipeline, tenant: str, size: int, reservation: str | None) -> None:
        """Queue on ``pipe`` the commit of a stored file (and the end of its reservation)."""
        pipe.hincrby(keys.quota(tenant, "stored"), "bytes", size)
        pipe.hincrby(keys.quota(tenant, "stored"), "files", 1)
        pipe.sadd(keys.QUOTA_TENANTS, tenant)
        if reservation is not None:
            pipe.zrem(keys.quota(tenant, "pending"), f"{reservation}|{size}")

    def file_removed(self, pipe: redis.client.Pipeline, tenant: str, size: int) -> None:
        pipe.hincrby(keys.quota(tenant, "stored"), "bytes", -size)
        pipe.hincrby(keys.quota(tenant, "stored"), "files", -1)

    def set_stored(self, pipe: redis.client.Pipeline, tenant: str, size: int, files: int) -> None:
        """The stored totals, as an index rebuilt from storage counted them."""
        pipe.hset(keys.quota(tenant, "stored"), mapping={"bytes": size, "files": files})
        pipe.sadd(keys.QUOTA_TENANTS, tenant)

    # --- batches ---------------------------------------------------------------------------------
    def admit_batch(self, tenant: str, batch_id: str, quota: Quota) -> None:
        """Count a new batch in flight, or QuotaExceeded when the tenant has as many as allowed."""
        n = int(self._admit_batch(keys=[keys.quota(tenant, "batches"), keys.QUOTA_TENANTS],
                                  args=[batch_id, quota.batches_in_flight, tenant]))
        if n >= 0:
            raise QuotaExceeded(
                f"Batch quota exceeded: this tenant has {n:,} of {quota.batches_in_flight:,} batches in flight "
                "allowed. Wait for one to finish (or cancel one) before creating another.", "batch_quota_exceeded")

    def batch_in_flight(self, pipe: redis.client.Pipeline, tenant: str, batch_id: str) -> None:
        """Queue on ``pipe`` the count of a batch in flight without a check (a batch restored after a Redis loss)."""
        pipe.sadd(keys.quota(tenant, "batches"), batch_id)
        pipe.sadd(keys.QUOTA_TENANTS, tenant)

    def batch_ended(self, pipe: redis.client.Pipeline, tenant: str, batch_id: str) -> None:
        """Queue on ``pipe`` the release of everything a batch held (in the transaction that ends it)."""
        pipe.srem(keys.quota(tenant, "batches"), batch_id)
        pipe.hdel(keys.quota(tenant, "enqueued"), batch_id)

    def forget_batch(self, tenant: str, batch_id: str) -> None:
        """A batch that was refused after it was counted (its creation failed half-way)."""
        pipe = self.r.pipeline()
        self.batch_ended(pipe, tenant, batch_id)
        pipe.execute()

    def reserve_enqueued(self, tenant: str, batch_id: str, per_model: dict[str, tuple[int, int]], quota: Quota,
                         *, check: bool = True) -> None:
        """Reserve a validated batch's lines and tokens per model (idempotent per batch), or QuotaExceeded."""
        if not per_model:
            return
        payload = json.dumps({model: [lines, tokens] for model, (lines, tokens) in per_model.items()})
        found = self._reserve_enqueued(
            keys=[keys.quota(tenant, "enqueued"), keys.QUOTA_TENANTS],
            args=[batch_id, payload, quota.lines_enqueued if check else 0, quota.tokens_enqueued if check else 0,
                  tenant])
        if not found or found[0] == "":
            return
        which, model, used_lines, used_tokens = found[0], found[1], int(found[2]), int(found[3])
        lines, tokens = per_model[model]
        if which == "lines":
            raise QuotaExceeded(
                f"Enqueued request limit reached for model {model}: this tenant has {used_lines:,} requests enqueued "
                f"of {quota.lines_enqueued:,} allowed, and this batch adds {lines:,}. Submit it once earlier batches "
                "have finished, or split it.", "request_limit_exceeded")
        raise QuotaExceeded(
            f"Enqueued token limit reached for model {model}: this tenant has {used_tokens:,} tokens enqueued of "
            f"{quota.tokens_enqueued:,} allowed, and this batch adds {tokens:,} (prompts, estimated, plus n x "
            "max_tokens). Submit it once earlier batches have finished, or split it.", "token_limit_exceeded")

    # --- reading ---------------------------------------------------------------------------------
    def usage(self, tenant: str) -> TenantUsage:
        pipe = self.r.pipeline()
        pipe.hgetall(keys.quota(tenant, "stored"))
        pipe.zcard(keys.quota(tenant, "pending"))
        pipe.scard(keys.quota(tenant, "batches"))
        pipe.hvals(keys.quota(tenant, "enqueued"))
        stored, pending, batches, enqueued_raw = pipe.execute()
        enqueued: dict[str, tuple[int, int]] = {}
        for raw in enqueued_raw:
            for model, (lines, tokens) in json.loads(raw).items():
                before = enqueued.get(model, (0, 0))
                enqueued[model] = (before[0] + lines, before[1] + tokens)
        return TenantUsage(bytes=max(0, int(stored.get("bytes", 0))), files=max(0, int(stored.get("files", 0))),
                           pending_uploads=int(pending), batches_in_flight=int(batches), enqueued=enqueued)

    def tenants(self) -> list[str]:
        return sorted(self.r.smembers(keys.QUOTA_TENANTS))
