"""The durable queue of webhook deliveries in Redis: a sorted set by next attempt time and a hash of payloads.

A delivery is added once per event (the event id is derived from the batch, so a re-run finalize adds
nothing new), claimed by one worker at a time (claiming pushes its due time one lease ahead, so a
worker that dies mid-send only delays it), and removed only after a 2xx: a crash between the send and
the removal sends it again, with the same ``webhook-id``. Every time is Redis' own clock (``TIME``), so
workers with skewed clocks neither claim early nor steal a live claim.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis

from pagebatch.jobs.store import keys

_NOW_MS = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: due, pending, done marker. ARGV: event id, payload. 1 when added, 0 when known or finished already.
_ADD = _NOW_MS + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
return 1
"""

# KEYS: due, pending. ARGV: lease (ms), how many due ids to look at, then tenants to skip. The earliest due
# delivery of a tenant not skipped: {id, payload, claim}, its due time moved to the claim (now + lease); nil if none.
_CLAIM = _NOW_MS + """
local skip = {}
for i = 3, #ARGV do skip[ARGV[i]] = true end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id) or ''
  local tenant = ''
  if raw ~= '' then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' and type(decoded['tenant']) == 'string' then tenant = decoded['tenant'] end
  end
  if not skip[tenant] then
    local claim = string.format('%d', now + tonumber(ARGV[1]))
    redis.call('ZADD', KEYS[1], claim, id)
    return {id, raw, claim}
  end
end
return nil
"""
CLAIM_SCAN = 500  # due deliveries a claim looks through for one of a receiver not skipped

# KEYS: due, pending. ARGV: event id, claim, delay (ms), payload. Reschedules only while the claim holds.
_RETRY = _NOW_MS + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
"""

# KEYS: due, pending, done marker. ARGV: event id, marker TTL (s). Removes the delivery for good.
_FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 1
"""


@dataclass
class Delivery:
    """One event on its way to one tenant's endpoint. ``body`` is the exact JSON that is signed and sent."""

    event_id: str
    tenant: str
    body: str
    first_at: float  # when the event was enqueued (unix seconds): deliveries give up some time after it
    attempts: int = 0  # attempts made so far
    claim: int = field(default=0, compare=False)  # the due time (ms) this claim set; not stored

    def encode(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k not in ("event_id", "claim")})

    @classmethod
    def decode(cls, event_id: str, raw: str, claim: int = 0) -> "Delivery":
        data = json.loads(raw)
        return cls(event_id=event_id, tenant=data["tenant"], body=data["body"], first_at=float(data["first_at"]),
                   attempts=int(data.get("attempts", 0)), claim=claim)


class WebhookOutbox:
    def __init__(self, client: redis.Redis, done_ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.done_ttl_s = done_ttl_s
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._retry = client.register_script(_RETRY)
        self._finish = client.register_script(_FINISH)

    def add(self, delivery: Delivery) -> bool:
        """Record the delivery, due now; False if this event is pending, delivered or given up already."""
        keys_ = [keys.WEBHOOKS_DUE, keys.WEBHOOKS_PENDING, keys.webhook_done(delivery.event_id)]
        return bool(self._add(keys=keys_, args=[delivery.event_id, delivery.encode()]))

    def claim(self, lease_s: float, skip_tenants: Iterable[str] = ()) -> Delivery | None:
        """The earliest due delivery (of a tenant not in ``skip_tenants``), hidden from other claims for
        ``lease_s``; None when nothing is due.

        A due id without a payload (left by hand) comes back with an empty body: the caller drops it.
        """
        found = self._claim(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_PENDING],
                            args=[int(lease_s * 1000), CLAIM_SCAN, *skip_tenants])
        if not found:
            return None
        event_id, raw, claim = found
        if not raw:
            return Delivery(event_id, tenant="", body="", first_at=0.0, claim=int(claim))
        return Delivery.decode(event_id, raw, int(claim))

    def retry(self, delivery: Delivery, delay_s: float) -> bool:
        """Due again in ``delay_s`` with its attempt count; False if the claim was lost (another worker has it)."""
        return bool(self._retry(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_PENDING],
                                args=[delivery.event_id, delivery.claim, int(delay_s * 1000), delivery.encode()]))

    def finish(self, delivery: Delivery) -> None:
        """Delivered (a 2xx) or given up: removed, and a late re-enqueue of the event is ignored."""
        self._finish(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_PENDING, keys.webhook_done(delivery.event_id)],
                     args=[delivery.event_id, self.done_ttl_s])

    def pending(self) -> dict[str, Delivery]:
        """Every delivery not finished yet, by event id."""
        raw = self.r.hgetall(keys.WEBHOOKS_PENDING)
        return {event_id: Delivery.decode(event_id, payload) for event_id, payload in raw.items()}

    def due_at(self, event_id: str) -> float | None:
        """When the delivery is next due (unix seconds, Redis' clock), or None if it is not pending."""
        score = self.r.zscore(keys.WEBHOOKS_DUE, event_id)
        return None if score is None else score / 1000

    def now(self) -> float:
        """Redis' clock (unix seconds), the one due times are in."""
        seconds, micros = self.r.time()
        return seconds + micros / 1e6
