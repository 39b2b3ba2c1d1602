"""Batch state on a real redis-server: compare-and-set transitions, once-only shard accounting."""
import threading
import time

import pytest

from pagebatch.jobs.batch.lifecycle import Event
from pagebatch.jobs.batch.schema import BatchRecord
from pagebatch.jobs.batch.shard_ref import ShardRef
from pagebatch.jobs.store.state import BatchState, connect
from pagebatch.jobs.store.storage import LocalStorage


@pytest.fixture
def state(redis_server, tmp_path):
    client = connect(redis_server.url)
    client.flushdb()
    return BatchState(client, LocalStorage(tmp_path / "data"))


def new_record(batch_id="batch_0001", tenant="t1", **kw):
    return BatchRecord(id=batch_id, tenant=tenant, endpoint="/v1/completions", input_file_id="file-1",
                       completion_window="24h", created_at=int(time.time()), **kw)


def test_only_one_of_many_racing_transitions_wins(state):
    state.create(new_record(status="in_progress"))
    wins = []

    def go():
        changed, _ = state.transition("batch_0001", Event.FINALIZE)
        wins.append(changed)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    durable = state.get_durable("t1", "batch_0001")
    assert durable.status == "finalizing" and durable.finalizing_at is not None


def test_each_shard_counts_once_and_done_shards_keep_their_counts(state):
    record = new_record(num_shards=2, rejected=2)
    record.request_counts.total = 14
    state.create(record)
    shard0, shard1 = (ShardRef("batch_0001", "t1", i) for i in (0, 1))
    state.shards.record_progress(shard0, 3, 0)
    assert state.shards.mark_done(shard0, 5, 1) == 1
    assert state.shards.mark_done(shard0, 5, 1) == 1  # a redelivered shard: not counted again
    state.shards.record_progress(shard0, 1, 0)  # a late progress write cannot roll it back
    state.shards.record_progress(shard1, 2, 0)
    counts = state.live_counts(record)
    assert (counts.total, counts.completed, counts.failed) == (14, 7, 3)  # the 2 rejected lines count as failed
    assert state.shards.mark_done(shard1, 6, 0) == 2
    assert state.shards.done("batch_0001") == {0, 1}


def test_shard_accounting_for_a_lost_batch_is_refused(state):
    assert state.shards.mark_done(ShardRef("batch_gone", "t1", 0), 1, 0) == -1


def test_reads_fall_back_to_the_durable_copy_and_respect_the_tenant(state):
    state.create(new_record())
    state.r.flushdb()  # Redis lost everything
    assert state.get("t1", "batch_0001").id == "batch_0001"
    assert state.get("someone-else", "batch_0001") is None
