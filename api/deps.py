"""Request dependencies: the process's services and the caller's tenant (from the Bearer key)."""
from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from pagebatch.api.errors import APIError
from pagebatch.jobs.services import Services


def services(request: Request) -> Services:
    return request.app.state.services


def tenant(request: Request) -> str:
    """Every /v1 call needs ``Authorization: Bearer <key>``; the key names the tenant."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "Missing bearer authentication in header", code="invalid_api_key")
    keys = request.app.state.services.settings.api_keys
    for known, owner in keys.items():
        if hmac.compare_digest(known.encode(), key.strip().encode()):
            return owner
    raise APIError(401, "Incorrect API key provided", code="invalid_api_key")


def list_page(records: list[Any], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object over records that have ``public()``."""
    data = [r.public() for r in records]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
