"""File objects (uploads and batch outputs): metadata and content in storage, scoped by tenant.

Storage holds each file's metadata and content; a Redis listing per tenant (jobs/store/listing.py)
pages through them without reading storage, and the tenant's stored bytes and files (jobs/store/quotas.py)
are counted with it. An upload reserves its room in the tenant's quota before a byte is written.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import BinaryIO, get_args

import redis

from pagebatch.jobs.batch.ids import is_valid_id, new_file_id
from pagebatch.jobs.batch.schema import FilePurpose, FileRecord
from pagebatch.jobs.settings import Quota
from pagebatch.jobs.store import keys, layout
from pagebatch.jobs.store.listing import TenantListing
from pagebatch.jobs.store.quotas import TenantQuotas
from pagebatch.jobs.store.storage import NotFound, Storage

PURPOSES: tuple[str, ...] = get_args(FilePurpose)


class FileStore:
    def __init__(self, storage: Storage, client: redis.Redis, quotas: TenantQuotas | None = None) -> None:
        self.storage, self.client = storage, client
        self.quotas = quotas or TenantQuotas(client)
        # One rebuild fills every listing of a tenant's files (and its stored totals): see _ensure_indexed.
        self._all = TenantListing(client, "files", self._rebuild)
        self._by_purpose = {p: TenantListing(client, f"files:{p}", self._rebuild) for p in PURPOSES}

    def create(self, tenant: str, filename: str, purpose: FilePurpose, content: BinaryIO, size: int,
               file_id: str | None = None, expires_after_s: int | None = None, quota: Quota | None = None
               ) -> FileRecord:
        """Store a file; with ``expires_after_s`` it is deleted that many seconds after its creation.

        With ``quota`` (uploads) the file must fit the tenant's stored bytes and files first (QuotaExceeded,
        and nothing is written); without (batch results) it is counted and never refused."""
        self._ensure_indexed(tenant)
        reservation = None if quota is None else self.quotas.reserve_upload(tenant, size, quota)
        now = int(time.time())
        record = FileRecord(id=file_id or new_file_id(), tenant=tenant, bytes=size, created_at=now,
                            filename=filename[:255] or "upload.jsonl", purpose=purpose,
                            expires_at=None if expires_after_s is None else now + expires_after_s)
        raw = record.model_dump_json()
        try:
            self.storage.put_fileobj(layout.file_content(tenant, record.id), content)
            self.storage.put_bytes(layout.file_meta(tenant, record.id), raw.encode())
        except BaseException:
            if reservation is not None:
                self.quotas.release_upload(tenant, reservation, size)
            raise
        self._index(record, raw, reservation)
        return record

    def _index(self, record: FileRecord, raw: str, reservation: str | None = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        known = self.client.hexists(keys.listing(record.tenant, "files", "records"), record.id)
        self._all.add(record.tenant, record.id, raw, pipe=pipe)
        self._by_purpose[record.purpose].add(record.tenant, record.id, raw, pipe=pipe)
        if record.expires_at is not None:
            pipe.zadd(keys.EXPIRING_FILES, {f"{record.tenant}|{record.id}": record.expires_at})
        if not known:  # a finalize re-run stores the same result file again: counted once
            self.quotas.file_stored(pipe, record.tenant, record.bytes, reservation)
        elif reservation is not None:
            self.quotas.release_upload(record.tenant, reservation, record.bytes)
        pipe.execute()

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
        if self.client.hdel(keys.listing(tenant, "files", "records"), file_id):  # counted once, freed once
            pipe = self.client.pipeline(transaction=False)
            self.quotas.file_removed(pipe, tenant, record.bytes)
            pipe.execute()
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

    def _ensure_indexed(self, tenant: str) -> None:
        self._all.ensure_built(tenant)

    def _rebuild(self, tenant: str) -> Iterator[tuple[str, str]]:
        """Re-index every file storage holds for the tenant (what a lost index is rebuilt from), in every listing
        at once, with its stored totals and expiry schedule; yields nothing itself."""
        pipe = self.client.pipeline(transaction=False)
        total = count = 0
        prefix = layout.files_prefix(tenant)
        for key in self.storage.list(prefix):
            try:
                raw = self.storage.get_bytes(key).decode()
            except NotFound:
                continue
            record = FileRecord.model_validate_json(raw)
            self._all.add(tenant, record.id, raw, pipe=pipe)
            self._by_purpose[record.purpose].add(tenant, record.id, raw, pipe=pipe)
            if record.expires_at is not None:  # the expiry schedule was lost with the index
                pipe.zadd(keys.EXPIRING_FILES, {f"{tenant}|{record.id}": record.expires_at})
            total, count = total + record.bytes, count + 1
            if count % 1000 == 0:
                pipe.execute()
        self.quotas.set_stored(pipe, tenant, total, count)
        for listing in self._by_purpose.values():
            pipe.set(keys.listing(tenant, listing.kind, "built"), int(time.time()))
        pipe.execute()
        return iter(())
