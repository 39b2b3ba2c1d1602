"""File objects (uploads and batch outputs): metadata and content in storage, scoped by tenant."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import BinaryIO

from jobs import layout
from jobs.ids import is_valid_id, new_file_id
from jobs.schema import FilePurpose, FileRecord
from jobs.storage import NotFound, Storage


class FileStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def create(self, tenant: str, filename: str, purpose: FilePurpose, content: BinaryIO, size: int,
               file_id: str | None = None) -> FileRecord:
        record = FileRecord(id=file_id or new_file_id(), tenant=tenant, bytes=size, created_at=int(time.time()),
                            filename=filename[:255] or "upload.jsonl", purpose=purpose)
        self.storage.put_fileobj(layout.file_content(tenant, record.id), content)
        self.storage.put_bytes(layout.file_meta(tenant, record.id), record.model_dump_json().encode())
        return record

    def get(self, tenant: str, file_id: str) -> FileRecord | None:
        if not is_valid_id(file_id, "file-"):
            return None
        try:
            return FileRecord.model_validate_json(self.storage.get_bytes(layout.file_meta(tenant, file_id)))
        except NotFound:
            return None

    def list(self, tenant: str, *, after: str | None, limit: int, purpose: str | None = None
             ) -> tuple[list[FileRecord], bool]:
        prefix = layout.files_prefix(tenant)
        start = layout.file_meta(tenant, after) if after and is_valid_id(after, "file-") else None
        records: list[FileRecord] = []
        for key in self.storage.list(prefix, start_after=start):
            try:
                record = FileRecord.model_validate_json(self.storage.get_bytes(key))
            except NotFound:
                continue
            if purpose is None or record.purpose == purpose:
                records.append(record)
            if len(records) > limit:
                break
        return records[:limit], len(records) > limit

    def delete(self, tenant: str, file_id: str) -> bool:
        if self.get(tenant, file_id) is None:
            return False
        self.storage.delete(layout.file_meta(tenant, file_id))
        self.storage.delete(layout.file_content(tenant, file_id))
        return True

    def content(self, tenant: str, file_id: str) -> Iterator[bytes]:
        return self.storage.iter_chunks(layout.file_content(tenant, file_id))

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
