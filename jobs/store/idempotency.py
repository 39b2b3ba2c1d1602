"""Idempotency keys: a retried create returns the first answer instead of creating a second object.

Per tenant and per kind of create, a key's record holds the fingerprint of the request that first used it,
whether that request is still running, and its answer once it has one. Claiming a key is one atomic
script, so of many concurrent requests with one key exactly one creates; the others wait for its answer.
A claim whose request dies is forgotten after ``PENDING_TTL_S``; an answer is kept for the configured TTL.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from pagebatch.jobs.store import keys

PENDING_TTL_S = 120  # a claim whose request never finishes blocks the key this long at most

_CLAIM = """
local existing = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'answer')
if existing[1] then return existing end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'pending', 'owner', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return false
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'pending' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: ours to create with (``owner`` set), or someone else's record."""

    owner: str | None  # set when this request claimed the key and must create the object
    fingerprint: str | None = None
    answer: dict[str, Any] | None = None  # the first request's answer, once it has one


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client, self.ttl_s = client, ttl_s
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def key(tenant: str, scope: str, idempotency_key: str) -> str:
        return keys.idempotency(tenant, scope, hashlib.sha256(idempotency_key.encode()).hexdigest()[:40])

    def claim(self, tenant: str, scope: str, idempotency_key: str, request_fingerprint: str) -> Claim:
        owner = secrets.token_hex(8)
        found = self._claim(keys=[self.key(tenant, scope, idempotency_key)],
                            args=[request_fingerprint, owner, PENDING_TTL_S])
        if not found:
            return Claim(owner)
        stored_fingerprint, state, answer = found
        return Claim(None, stored_fingerprint, json.loads(answer) if state == "done" and answer else None)

    def record(self, tenant: str, scope: str, idempotency_key: str, answer: dict[str, Any]) -> None:
        key = self.key(tenant, scope, idempotency_key)
        pipe = self.client.pipeline()
        pipe.hset(key, mapping={"state": "done", "answer": json.dumps(answer)})
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def release(self, tenant: str, scope: str, idempotency_key: str, owner: str) -> None:
        """The claimed request failed: free the key so a retry may create (only our own pending claim)."""
        self._release(keys=[self.key(tenant, scope, idempotency_key)], args=[owner])
