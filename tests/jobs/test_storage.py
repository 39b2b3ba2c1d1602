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
