"""/v1/files: upload, list, retrieve, download and delete files (tenant-scoped)."""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from fastapi.responses import StreamingResponse

from pagebatch.api.deps import list_page, services, tenant
from pagebatch.api.errors import APIError, not_found
from pagebatch.api.idempotency import IdempotencyKey, idempotent
from pagebatch.jobs.pipeline.batches import expires_after_seconds
from pagebatch.jobs.services import Services
from pagebatch.jobs.store.idempotency import fingerprint
from pagebatch.jobs.store.storage import NotFound

router = APIRouter(prefix="/v1/files")
Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]


@router.post("")
def upload(svc: Svc, owner: Tenant, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
           response: Response, anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
           seconds: Annotated[str | None, Form(alias="expires_after[seconds]")] = None,
           idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    if purpose != "batch":
        raise APIError(400, "purpose must be batch", param="purpose")
    expires = None if anchor is None and seconds is None else {"anchor": anchor, "seconds": seconds}
    expires_after_s = expires_after_seconds(expires, "expires_after")
    size = file.size if file.size is not None else _measure(file)
    if size > svc.settings.max_upload_bytes:
        raise APIError(413, f"file larger than {svc.settings.max_upload_bytes} bytes", code="file_too_large")

    def store() -> dict[str, Any]:
        file.file.seek(0)
        return svc.files.create(owner, file.filename or "upload.jsonl", "batch", file.file, size,
                                expires_after_s=expires_after_s, quota=svc.settings.quota_for(owner)).public()

    if idempotency_key is None:
        return store()
    request = fingerprint(purpose, file.filename or "", str(expires_after_s), _content_digest(file))
    return idempotent(svc, owner, "files", idempotency_key, request, store, response)


def _content_digest(file: UploadFile) -> str:
    digest = hashlib.sha256()
    file.file.seek(0)
    while chunk := file.file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _measure(file: UploadFile) -> int:
    file.file.seek(0, 2)
    return file.file.tell()


@router.get("")
def list_files(svc: Svc, owner: Tenant, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               after: str | None = None, purpose: str | None = None,
               order: Annotated[Literal["asc", "desc"], Query()] = "desc") -> dict[str, Any]:
    records, has_more = svc.files.list(owner, after=after, limit=limit, purpose=purpose, order=order)
    return list_page(records, has_more)


@router.get("/{file_id}")
def retrieve(svc: Svc, owner: Tenant, file_id: str) -> dict[str, Any]:
    record = svc.files.get(owner, file_id)
    if record is None:
        raise not_found("File", file_id)
    return record.public()


@router.get("/{file_id}/content")
def content(svc: Svc, owner: Tenant, file_id: str) -> StreamingResponse:
    record = svc.files.get(owner, file_id)
    if record is None:
        raise not_found("File", file_id)
    try:
        chunks = svc.files.content(owner, file_id)
        first = next(chunks, b"")
    except NotFound:
        raise not_found("File", file_id) from None

    def body():
        yield first
        yield from chunks

    return StreamingResponse(body(), media_type="application/octet-stream",
                             headers={"Content-Length": str(record.bytes)})


@router.delete("/{file_id}")
def delete(svc: Svc, owner: Tenant, file_id: str) -> dict[str, Any]:
    if not svc.files.delete(owner, file_id):
        raise not_found("File", file_id)
    return {"id": file_id, "object": "file", "deleted": True}
