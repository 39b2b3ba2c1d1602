"""Per-tenant listings of files and batches in Redis, so a page costs one read whatever the tenant holds.

Storage stays the durable record: every object is written there first, then indexed here. A tenant's
index is marked complete (``built``) when its first object is written, so listing never reads storage
while the index is intact; an index Redis lost (no marker) is rebuilt from storage once, under a lock, by
the next write or listing.
Ids sort newest first as text (jobs/batch/ids.py), so a sorted set with equal scores pages by id.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis

from pagebatch.jobs.store import keys

ORDERS = ("desc", "asc")  # desc: newest first (the API's default)


class TenantListing:
    """One kind of object (``files``, ``files:batch``, ``batches``, …) of each tenant."""

    def __init__(self, client: redis.Redis, kind: str, rebuild: Callable[[str], Iterable[tuple[str, str | None]]],
                 rebuild_lock_s: int = 300) -> None:
        """``rebuild(tenant)`` yields (id, record JSON or None) for everything storage holds."""
        self.client, self.kind, self._rebuild, self.rebuild_lock_s = client, kind, rebuild, rebuild_lock_s

    def add(self, tenant: str, object_id: str, record_json: str | None = None, *, pipe: redis.client.Pipeline | None = None
            ) -> None:
        target = pipe if pipe is not None else self.client.pipeline(transaction=False)
        target.zadd(keys.listing(tenant, self.kind), {object_id: 0})
        if record_json is not None:
            target.hset(keys.listing(tenant, self.kind, "records"), object_id, record_json)
        if pipe is None:
            target.execute()

    def remove(self, tenant: str, object_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(keys.listing(tenant, self.kind), object_id)
        pipe.hdel(keys.listing(tenant, self.kind, "records"), object_id)
        pipe.execute()

    def page(self, tenant: str, *, after: str | None, limit: int, order: str = "desc"
             ) -> tuple[list[tuple[str, str | None]], bool]:
        """Up to ``limit`` (id, record JSON or None) after ``after``, and whether more follow."""
        self.ensure_built(tenant)
        index = keys.listing(tenant, self.kind)
        if order == "asc":
            ids = self.client.zrevrangebylex(index, f"({after}" if after else "+", "-", start=0, num=limit + 1)
        else:
            ids = self.client.zrangebylex(index, f"({after}" if after else "-", "+", start=0, num=limit + 1)
        page = ids[:limit]
        records = self.client.hmget(keys.listing(tenant, self.kind, "records"), page) if page else []
        return list(zip(page, records, strict=True)), len(ids) > limit

    def ensure_built(self, tenant: str) -> None:
        """Rebuild the tenant's index from storage unless it is known complete (its ``built`` marker).

        Writers call it before they add (for a new tenant that costs one empty storage listing), so the index
        of a tenant is marked complete from its first object on, and a first listing never reads storage;
        only an index Redis lost is rebuilt, once."""
        built = keys.listing(tenant, self.kind, "built")
        if self.client.exists(built):
            return
        lock = keys.listing(tenant, self.kind, "built:lock")
        if not self.client.set(lock, "1", nx=True, ex=self.rebuild_lock_s):
            return  # another process is rebuilding: list what is indexed so far
        try:
            pipe = self.client.pipeline(transaction=False)
            for count, (object_id, record_json) in enumerate(self._rebuild(tenant), start=1):
                self.add(tenant, object_id, record_json, pipe=pipe)
                if count % 1000 == 0:
                    pipe.execute()
            pipe.set(built, int(time.time()))
            pipe.execute()
        finally:
            self.client.delete(lock)
