"""One batch per S3 object version: claims on bucket/key/etag for the at-least-once triggers.

Redis holds the atomic claim (SET NX), so two deliveries racing each other start one batch; a marker
in storage holds the durable answer, so a Redis restart without persistence does not let a
redelivered event start a second batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis

from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.storage import NotFound, Storage


class _Handles(Protocol):
    """What claims need of the service's handles (jobs.services.Services has them)."""

    redis: redis.Redis
    storage: Storage
    settings: Any


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def claim_id(bucket: str, key: str, etag: str) -> str:
    return hashlib.sha256(f"{bucket}\n{key}\n{etag}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Claim:
    """Who started (or is starting) the batch for one object version."""

    tenant: str
    batch_id: str

    def encode(self) -> str:
        return f"{self.tenant} {self.batch_id}"

    @classmethod
    def decode(cls, raw: str) -> "Claim":
        tenant, _, batch_id = raw.partition(" ")
        return cls(tenant, batch_id)


@dataclass(frozen=True)
class Marker:
    bucket: str
    key: str
    etag: str
    tenant: str
    batch_id: str
    created_at: int


class TriggerClaims:
    def __init__(self, svc: _Handles) -> None:
        self.svc = svc
        self._release = svc.redis.register_script(_RELEASE)

    def current(self, ident: str) -> Claim | None:
        raw = self.svc.redis.get(keys.named("trigger", ident))
        return None if raw is None else Claim.decode(raw)

    def acquire(self, ident: str, claim: Claim) -> bool:
        """Claim the object version for a while; False if someone holds or finished it."""
        ttl = self.svc.settings.trigger_claim_ttl_s
        return bool(self.svc.redis.set(keys.named("trigger", ident), claim.encode(), nx=True, ex=ttl))

    def confirm(self, ident: str, claim: Claim) -> None:
        """The batch exists: keep answering redeliveries from Redis (storage's marker outlives this)."""
        self.svc.redis.set(keys.named("trigger", ident), claim.encode(), ex=self.svc.settings.state_ttl_s)

    def release(self, ident: str, claim: Claim) -> None:
        """Give up a claim that did not start its batch, so a redelivery can try again."""
        self._release(keys=[keys.named("trigger", ident)], args=[claim.encode()])

    def marker(self, ident: str) -> Marker | None:
        try:
            return Marker(**json.loads(self.svc.storage.get_bytes(layout.trigger_marker(ident))))
        except NotFound:
            return None

    def write_marker(self, ident: str, bucket: str, key: str, etag: str, claim: Claim) -> None:
        marker = Marker(bucket, key, etag, claim.tenant, claim.batch_id, int(time.time()))
        self.svc.storage.put_bytes(layout.trigger_marker(ident), json.dumps(asdict(marker)).encode())
