"""File objects (uploads and batch outputs): metadata and content in storage, scoped by tenant.

Storage holds each file's metadata and content; a Redis listing per tenant (jobs/store/listing.py)
pages through them without reading storage.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import BinaryIO, get_args

import redis

from pagebatch.jobs.batch.ids import is_valid_id, new_file_id
from pagebatch.jobs.batch.schema import FilePurpose, FileRecord
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.listing import TenantListing
from pagebatch.jobs.store.storage import NotFound, Storage

PURPOSES: tuple[str, ...] = get_args(FilePurpose)


class FileStore:
    def __init__(self, storage: Storage, client: redis.Redis) -> None:
        self.storage, self.client = storage, client
        self._all = TenantListing(client, "files", lambda t: self._stored(t, None))
        self._by_purpose = {p: TenantListing(client, f"files:{p}", lambda t, p=p: self._stored(t, p)) for p in PURPOSES}

    def create(self, tenant: str, filename: str, purpose: FilePurpose, content: BinaryIO, size: int,
               file_id: str | None = None, expires_after_s: int | None = None) -> FileRecord:
        """Store a file; with ``expires_after_s`` it is deleted that many seconds after its creation."""
        now = int(time.time())
        record = FileRecord(id=file_id or new_file_id(), tenant=tenant, bytes=size, created_at=now,
                            filename=filename[:255] or "upload.jsonl", purpose=purpose,
                            expires_at=None if expires_after_s is None else now + expires_after_s)
        raw = record.model_dump_json()
        self.storage.put_fileobj(layout.file_content(tenant, record.id), content)
        self.storage.put_bytes(layout.file_meta(tenant, record.id), raw.encode())
        self._index(record, raw)
        return record

    def _index(self, record: FileRecord, raw: str) -> None:
        self._all.add(record.tenant, record.id, raw)
        self._by_purpose[record.purpose].add(record.tenant, record.id, raw)
        if record.expires_at is not None:
            self.client.zadd(keys.EXPIRING_FILES, {f"{record.tenant}|{record.id}": record.expires_at})

    def delete_expired(self, now: float | None = None, limit: int = 1000) -> int:
        """Delete the files whose time has come (their content and listing entries); returns how many."""
        due = self.client.zrangebyscore(keys.EXPIRING_FILES, "-inf", time.time() if now is None else now,
                                        start=0, num=limit)
        for member in due:
            tenant, _, file_id = member.partition("|")
            self.delete(tenant, file_id)
            self.client.zrem(keys.EXPIRING_FILES, member)
        return len(due)

    def get(self, tenant: str, file_id: str) -> FileRecord | None:
        if not is_valid_id(file_id, "file-"):
            return None
        try:
            return FileRecord.model_validate_json(self.storage.get_bytes(layout.file_meta(tenant, file_id)))
        except NotFound:
            return None

    def list(self, tenant: str, *, after: str | None, limit: int, purpose: str | None = None, order: str = "desc"
             ) -> tuple[list[FileRecord], bool]:
        if purpose is not None and purpose not in PURPOSES:
            return [], False
        listing = self._all if purpose is None else self._by_purpose[purpose]
        page, has_more = listing.page(tenant, after=after if after and is_valid_id(after, "file-") else None,
                                      limit=limit, order=order)
        records = []
        for file_id, raw in page:
            record = FileRecord.model_validate_json(raw) if raw else self.get(tenant, file_id)
            if record is not None:
                records.append(record)
        return records, has_more

    def delete(self, tenant: str, file_id: str) -> bool:
        record = self.get(tenant, file_id)
        if record is None:
            return False
        self.storage.delete(layout.file_meta(tenant, file_id))
        self.storage.delete(layout.file_content(tenant, file_id))
        self._all.remove(tenant, file_id)
        self._by_purpose[record.purpose].remove(tenant, file_id)
        return True

    def content(self, tenant: str, file_id: str, start: int = 0) -> Iterator[bytes]:
        """The file's bytes from offset ``start`` on."""
        return self.storage.iter_chunks(layout.file_content(tenant, file_id), start)

    def lines(self, tenant: str, file_id: str) -> Iterator[bytes]:
        """The file's lines without their line breaks, streamed."""
        buf = bytearray()
        for chunk in self.content(tenant, file_id):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                buf += chunk[start:end]
                yield bytes(buf)
                buf.clear()
                start = end + 1
            buf += chunk[start:]
        if buf:
            yield bytes(buf)

    def _stored(self, tenant: str, purpose: str | None) -> Iterator[tuple[str, str]]:
        """Every file storage holds for the tenant (what a lost listing is rebuilt from)."""
        prefix = layout.files_prefix(tenant)
        for key in self.storage.list(prefix):
            try:
                raw = self.storage.get_bytes(key).decode()
            except NotFound:
                continue
            record = FileRecord.model_validate_json(raw)
            if purpose is None and record.expires_at is not None:  # the expiry schedule was lost with the index
                self.client.zadd(keys.EXPIRING_FILES, {f"{tenant}|{record.id}": record.expires_at})
            if purpose is None or record.purpose == purpose:
                yield record.id, raw
