"""Listing files and batches reads a per-tenant index in Redis: fast at any size, rebuilt from storage when lost."""
import io
import time

import pytest

from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.store.files import FileStore
from pagebatch.jobs.store.state import BatchState, connect
from pagebatch.jobs.store.storage import LocalStorage


class CountingStorage(LocalStorage):
    """Real local storage that counts what is read from it."""

    reads = 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        return super().get_bytes(key)

    def list(self, prefix, start_after=None, limit=None):
        self.reads += 1
        return super().list(prefix, start_after, limit)


@pytest.fixture
def client(redis_server):
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/5")
    client.flushdb()
    yield client
    client.flushdb()


def test_five_thousand_files_list_in_milliseconds_and_survive_a_redis_loss(client, tmp_path):
    storage = CountingStorage(tmp_path / "data")
    files = FileStore(storage, client)
    made = [files.create("t1", f"f{i}.jsonl", "batch", io.BytesIO(b"{}\n"), 3).id for i in range(5000)]
    files.create("t2", "other.jsonl", "batch", io.BytesIO(b"{}\n"), 3)
    newest_first = sorted(made)  # ids sort newest first (files made in the same millisecond: by their random tail)

    # The index is intact (every upload indexed itself): the tenant's first listings read nothing from storage.
    storage.reads = 0
    started = time.perf_counter()
    everything, more = files.list("t1", after=None, limit=10000)
    by_purpose, _ = files.list("t1", after=None, limit=10, purpose="batch")
    first = time.perf_counter() - started
    assert len(everything) == 5000 and not more and len(by_purpose) == 10
    assert storage.reads == 0, f"the first listing read storage {storage.reads} times"
    print(f"first listing of all 5,000 files: {first * 1000:.0f} ms, no storage reads")

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        page, more = files.list("t1", after=None, limit=20)
        best = min(best, time.perf_counter() - started)
    assert [f.id for f in page] == newest_first[:20] and more
    print(f"list 20 of 5,000 files: {best * 1000:.2f} ms (best of 5)")
    assert best < 0.1, f"listing 20 of 5,000 files took {best * 1000:.1f} ms"

    page, more = files.list("t1", after=newest_first[4990], limit=20)
    assert [f.id for f in page] == newest_first[4991:] and not more
    page, _ = files.list("t1", after=None, limit=3, order="asc")
    assert [f.id for f in page] == newest_first[::-1][:3]
    assert files.list("t1", after=None, limit=5, purpose="batch_output") == ([], False)

    client.flushdb()  # Redis lost the index: the next listing rebuilds it from storage
    started = time.perf_counter()
    page, more = files.list("t1", after=None, limit=20)
    print(f"first listing after Redis lost the index (rebuilt from storage): {(time.perf_counter() - started) * 1000:.0f} ms")
    assert [f.id for f in page] == newest_first[:20] and more
    assert files.delete("t1", newest_first[0])
    assert files.list("t1", after=None, limit=1)[0][0].id == newest_first[1]


def test_batches_list_from_the_index_and_after_a_redis_loss(client, tmp_path):
    state = BatchState(client, LocalStorage(tmp_path / "data"))
    ids = []
    for n in range(30):
        record = BatchRecord(id=f"batch_{n:04d}", tenant="t1", endpoint="/v1/completions", input_file_id="file-1",
                             completion_window="24h", created_at=int(time.time()))
        state.create(record)
        ids.append(record.id)
    page, more = state.list("t1", after=None, limit=10)
    assert [b.id for b in page] == ids[:10] and more  # these test ids sort oldest first
    client.flushdb()
    page, more = state.list("t1", after=ids[24], limit=10)
    assert [b.id for b in page] == ids[25:] and not more
    assert state.list("nobody", after=None, limit=10) == ([], False)


def test_files_expire_on_schedule_and_the_schedule_survives_a_redis_loss(client, tmp_path):
    files = FileStore(LocalStorage(tmp_path / "data"), client)
    keep = files.create("t1", "keep.jsonl", "batch", io.BytesIO(b"{}\n"), 3)
    short = files.create("t1", "short.jsonl", "batch", io.BytesIO(b"{}\n"), 3, expires_after_s=3600)
    assert short.expires_at == short.created_at + 3600
    assert files.delete_expired(now=short.expires_at - 1) == 0
    client.flushdb()  # the schedule is rebuilt with the listing
    assert [f.id for f in files.list("t1", after=None, limit=10)[0]] == sorted([keep.id, short.id])
    assert files.delete_expired(now=short.expires_at) == 1
    assert files.get("t1", short.id) is None and files.get("t1", keep.id) is not None
    assert [f.id for f in files.list("t1", after=None, limit=10)[0]] == [keep.id]
