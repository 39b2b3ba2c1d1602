"""The ``Idempotency-Key`` header of POST /v1/files and POST /v1/batches (docs/api.md#idempotent-requests).

The same key with the same request returns the first request's object (with ``Idempotent-Replayed: true``),
however often and however concurrently it is sent; the same key with a different request is a 409 that says
so. A request that fails frees its key, so a corrected retry may use it. Keys belong to the caller's tenant
and are remembered for ``PAGEBATCH_IDEMPOTENCY_TTL_S``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Response

from pagebatch.api.errors import APIError
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.idempotency import IdempotencyStore

MAX_KEY_CHARS = 255
WAIT_FOR_FIRST_S = 30.0  # how long a repeat waits for the first request's answer before it is told to retry

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=MAX_KEY_CHARS,
                                              description="Send a retry with the same key: it returns the first "
                                                          "object instead of creating another.")]


def idempotent(svc: Services, tenant: str, scope: str, key: str | None, request_fingerprint: str,
               create: Callable[[], dict[str, Any]], response: Response) -> dict[str, Any]:
    """``create()``'s answer, created at most once per (tenant, scope, key)."""
    if key is None:
        return create()
    if not key or not key.isascii() or not key.isprintable():
        raise APIError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters", code="invalid_idempotency_key",
                       param="Idempotency-Key")
    store = IdempotencyStore(svc.redis, svc.settings.idempotency_ttl_s)
    deadline = time.monotonic() + WAIT_FOR_FIRST_S
    while True:
        claim = store.claim(tenant, scope, key, request_fingerprint)
        if claim.owner is not None:
            try:
                answer = create()
            except BaseException:
                store.release(tenant, scope, key, claim.owner)
                raise
            store.record(tenant, scope, key, answer)
            return answer
        if claim.fingerprint != request_fingerprint:
            raise APIError(409, "this Idempotency-Key was already used with a different request; a retry must send "
                                "the same request, and a new request needs a new key",
                           code="idempotency_key_reused", param="Idempotency-Key")
        if claim.answer is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return claim.answer
        if time.monotonic() > deadline:
            raise APIError(409, "a request with this Idempotency-Key is still being processed; retry shortly",
                           code="idempotency_key_in_use", param="Idempotency-Key")
        time.sleep(0.05)
