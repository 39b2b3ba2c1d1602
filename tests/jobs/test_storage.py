"""The storage contract, on a local directory and on a real S3 endpoint (moto's server over HTTP)."""
import io

import pytest

from pagebatch.jobs.store.storage import LocalStorage, NotFound, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStorage(tmp_path / "data")
    s3 = request.getfixturevalue("moto_s3")
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return open_storage(f"s3://{s3.new_bucket()}/some/prefix")


def test_put_get_size_delete(storage):
    storage.put_bytes("a/b/one.json", b"{}")
    storage.put_fileobj("a/b/two.jsonl", io.BytesIO(b"x\n" * 1000))
    assert storage.get_bytes("a/b/one.json") == b"{}"
    assert storage.size("a/b/two.jsonl") == 2000
    assert b"".join(storage.iter_chunks("a/b/two.jsonl")) == b"x\n" * 1000
    storage.put_bytes("a/b/one.json", b"[]")  # overwrite, not duplicate
    assert storage.get_bytes("a/b/one.json") == b"[]"
    storage.delete("a/b/one.json")
    assert not storage.exists("a/b/one.json")
    with pytest.raises(NotFound):
        storage.get_bytes("a/b/one.json")
    with pytest.raises(NotFound):
        list(storage.iter_chunks("a/b/missing"))


def test_list_is_sorted_pages_and_deletes_by_prefix(storage):
    for name in ["c", "a", "b", "d"]:
        storage.put_bytes(f"p/{name}.json", b"1")
    storage.put_bytes("q/other.json", b"1")
    assert storage.list("p/") == ["p/a.json", "p/b.json", "p/c.json", "p/d.json"]
    assert storage.list("p/", start_after="p/b.json", limit=1) == ["p/c.json"]
    storage.delete_prefix("p/")
    assert storage.list("p/") == [] and storage.list("q/") == ["q/other.json"]


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", ""])
def test_rejects_keys_that_could_escape(storage, key):
    with pytest.raises(ValueError):
        storage.put_bytes(key, b"x")


class ReadAheadProbe(io.BytesIO):
    """A seekable upload source that records how far its reads ran ahead of the parts S3 had received."""

    def __init__(self, size: int, part: int) -> None:
        super().__init__(bytes(size))
        self.part, self.parts_sent, self.most_ahead = part, 0, 0

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        self.most_ahead = max(self.most_ahead, self.tell() - self.parts_sent * self.part)
        return data

    def part_sent(self, **_) -> None:
        self.parts_sent += 1


def test_an_upload_holds_a_few_parts_in_memory_whatever_the_files_length(moto_s3, monkeypatch):
    """The API streams an upload to S3 in 8 MiB parts; s3transfer's default reads up to ten ahead (~80 MiB)."""
    for key, value in moto_s3.env().items():
        monkeypatch.setenv(key, value)
    storage = open_storage(f"s3://{moto_s3.new_bucket()}/p")
    part = 8 * 2**20
    source = ReadAheadProbe(12 * part, part)
    storage.client.meta.events.register("after-call.s3.UploadPart", source.part_sent)
    storage.put_fileobj("big.jsonl", source)
    assert storage.size("big.jsonl") == 12 * part and source.parts_sent == 12
    assert source.most_ahead <= 3 * part, f"read {source.most_ahead / part:.1f} parts ahead of S3"
