"""Object storage behind one small interface: S3 (boto3, standard AWS variables) or a local directory.

Keys are always built by the service from generated ids, never from user input.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


class NotFound(KeyError):
    """The key does not exist."""


class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str, start: int = 0) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str, start_after: str | None = None, limit: int | None = None) -> list[str]: ...
    def describe(self) -> str: ...


@lru_cache(maxsize=64)
def bucket_storage(bucket: str) -> "S3Storage":
    """A whole bucket outside the service's own storage (S3 triggers' inboxes and outboxes); one client per process."""
    return S3Storage(bucket)


def is_bucket_name(name: str) -> bool:
    return bool(_BUCKET.match(name))


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix); ValueError naming what is wrong otherwise."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not is_bucket_name(bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name")
    return bucket, prefix


def open_storage(spec: str) -> Storage:
    """``s3://bucket/prefix`` or a local directory path."""
    if spec.startswith("s3://"):
        return S3Storage(*parse_s3_url(spec))
    return LocalStorage(Path(spec))


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise ValueError(f"bad storage key {key!r}")
    return key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        self._atomic_write(key, lambda f: shutil.copyfileobj(fileobj, f, CHUNK))

    def _atomic_write(self, key: str, write) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    def iter_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(key) from None
        with f:
            f.seek(start)
            while chunk := f.read(CHUNK):
                yield chunk

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def list(self, prefix: str, start_after: str | None = None, limit: int | None = None) -> list[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )
        keys = [k for k in keys if k.startswith(prefix) and (start_after is None or k > start_after)]
        return keys if limit is None else keys[:limit]


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # boto3 reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, credentials and region from the environment.
        self.client = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _missing(self, error: Exception) -> bool:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        return code in ("NoSuchKey", "404", "NotFound")

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        # s3transfer reads a seekable file's parts into memory ahead of sending them: up to 10 parts of 8 MiB by
        # default (``max_in_memory_upload_chunks``, which boto3's TransferConfig does not take as an argument), so an
        # API process grew by ~80 MiB with the size of the file uploaded. Two parts read, two sent: 16 MiB at most.
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(max_concurrency=2, multipart_chunksize=8 * 2**20)
        config.max_in_memory_upload_chunks = 2
        self.client.upload_fileobj(fileobj, self.bucket, self._key(key), Config=config)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.ClientError as e:
            if self._missing(e):
                raise NotFound(key) from None
            raise

    def iter_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        """The object's bytes from offset ``start`` on (a ranged GET), in chunks."""
        ranged = {"Range": f"bytes={start}-"} if start else {}
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)["Body"]
        except self.client.exceptions.ClientError as e:
            if self._missing(e):
                raise NotFound(key) from None
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # start is at (or past) the end: nothing more to read
            raise
        yield from body.iter_chunks(CHUNK)

    def size(self, key: str) -> int:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except self.client.exceptions.ClientError as e:
            if self._missing(e):
                raise NotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def contains(self, key: str) -> bool:
        """Whether a raw bucket key lies inside this storage's prefix."""
        return key.startswith(self.prefix)

    def etag(self, key: str) -> str | None:
        """The object's current ETag (quoted, as S3 sends it); botocore's errors propagate."""
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key)).get("ETag")

    def open_version(self, key: str, etag: str) -> tuple[BinaryIO, int]:
        """The object's body and size, only if its ETag is still ``etag`` (else S3's PreconditionFailed)."""
        obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), IfMatch=f'"{etag}"')
        return obj["Body"], int(obj["ContentLength"])

    def list_versions(self, prefix: str) -> Iterator[tuple[str, str | None]]:
        """(key, ETag) of every object under ``prefix``."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) if prefix else self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):], item.get("ETag")

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            objects = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def list(self, prefix: str, start_after: str | None = None, limit: int | None = None) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": self._key(prefix) if prefix else self.prefix}
        if start_after:
            kwargs["StartAfter"] = self._key(start_after)
        keys: list[str] = []
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents", []):
                keys.append(item["Key"][len(self.prefix) :])
                if limit is not None and len(keys) >= limit:
                    return keys
        return keys
