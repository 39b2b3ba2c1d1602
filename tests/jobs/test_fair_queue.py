"""Fair dispatch on a real redis-server: by work between tenants, turns between batches, a window, a per-tenant cap."""
import pytest

from pagebatch.jobs.batch.shard_ref import ShardRef
from pagebatch.jobs.store.fair_queue import FairQueue, ShardLoad
from pagebatch.jobs.store.state import connect

MODEL = "m"


@pytest.fixture
def client(redis_server):
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/6")
    client.flushdb()
    yield client
    client.flushdb()


def make(client, window=2, cap=0):
    sent = []
    queue = FairQueue(client, lambda ref, model: sent.append((ref.tenant, ref.batch_id, ref.index)), window, cap)
    return queue, sent


def shards(tenant, batch, pairs):
    """(ShardRef, ShardLoad) of (index, lines) or (index, lines, work); a line weighs one unit of work by default."""
    return [(ShardRef(batch, tenant, p[0]), ShardLoad(p[1], p[2] if len(p) > 2 else p[1])) for p in pairs]


def enqueue(queue, tenant, batch, pairs):
    return queue.enqueue(MODEL, shards(tenant, batch, pairs))


def done(queue, tenant, batch, index):
    queue.done(MODEL, ShardRef(batch, tenant, index))


def test_a_small_batch_behind_a_big_one_goes_next(client):
    queue, sent = make(client, window=2)
    enqueue(queue, "big", "batch_big", [(i, 200) for i in range(250)])
    assert sent == [("big", "batch_big", 0), ("big", "batch_big", 1)]  # the window is full
    enqueue(queue, "small", "batch_small", [(0, 10)])
    assert len(sent) == 2 and queue.waiting(MODEL) == 249
    done(queue, "big", "batch_big", 0)
    assert sent[-1] == ("small", "batch_small", 0)  # the other tenant's turn, not the big batch's
    done(queue, "small", "batch_small", 0)
    done(queue, "big", "batch_big", 1)
    assert sent[-2:] == [("big", "batch_big", 2), ("big", "batch_big", 3)]  # alone again: it gets every place


def test_batches_of_one_tenant_take_turns_and_nothing_is_queued_twice(client):
    queue, sent = make(client, window=1)
    enqueue(queue, "t", "batch_a", [(0, 5), (1, 5), (2, 5)])
    enqueue(queue, "t", "batch_b", [(0, 5), (1, 5)])
    assert enqueue(queue, "t", "batch_a", [(0, 5), (1, 5), (2, 5)]) == 0  # a redelivered prepare
    order = [sent[-1][1:]]
    for _ in range(4):
        done(queue, "t", *order[-1])
        order.append(sent[-1][1:])
    assert order == [("batch_a", 0), ("batch_b", 0), ("batch_a", 1), ("batch_b", 1), ("batch_a", 2)]
    done(queue, "t", "batch_a", 2)
    assert queue.in_flight(MODEL) == [] and queue.waiting(MODEL) == 0


def test_a_tenant_over_its_line_cap_waits_while_others_run(client):
    queue, sent = make(client, window=10, cap=300)
    enqueue(queue, "greedy", "batch_g", [(i, 200) for i in range(5)])
    assert [s[2] for s in sent] == [0]  # a second shard would put 400 lines in flight
    enqueue(queue, "other", "batch_o", [(0, 200), (1, 200)])
    assert sent[1:] == [("other", "batch_o", 0)]
    done(queue, "greedy", "batch_g", 0)
    assert sent[-1] == ("greedy", "batch_g", 1)


def test_fair_share_counts_work_not_lines(client):
    """A tenant whose few lines carry a lot of work (n=128, long max_tokens) does not take every place: the next
    place goes to the tenant with the least work in flight, however few lines the heavy one has in flight."""
    queue, sent = make(client, window=3)
    enqueue(queue, "heavy", "batch_h", [(i, 8, 8 * 128 * 4000) for i in range(4)])
    assert sent == [("heavy", "batch_h", i) for i in range(3)]
    enqueue(queue, "light", "batch_l", [(i, 200, 200 * 100) for i in range(4)])
    done(queue, "heavy", "batch_h", 0)
    assert sent[-1] == ("light", "batch_l", 0)
    done(queue, "heavy", "batch_h", 1)
    # 200 lines of light work in flight still weigh far less than one heavy shard: light goes again
    assert sent[-1] == ("light", "batch_l", 1)
    assert queue.work_in_flight(MODEL) == {"heavy": 8 * 128 * 4000, "light": 2 * 200 * 100}


def test_a_release_whose_sender_died_is_sent_again(client):
    calls = []

    def flaky(ref, model):
        calls.append(ref.index)
        if len(calls) == 1:
            raise ConnectionError("the releasing process died here")

    queue = FairQueue(client, flaky, window=4)
    with pytest.raises(ConnectionError):
        enqueue(queue, "t", "batch_x", [(0, 1)])
    [item] = queue.in_flight(MODEL)
    assert not item.sent
    assert queue.resend_unsent(MODEL, older_than_s=-1) == 1
    assert calls == [0, 0] and queue.in_flight(MODEL)[0].sent


def test_a_shard_message_the_broker_lost_is_sent_again(redis_server, client):
    """A broker that dies between popping a message and recording it unacked loses it: the sweep re-sends it."""
    from pagebatch.jobs.settings import Settings
    from pagebatch.jobs.store import keys
    from pagebatch.jobs.store.queues import SHARD_TASK, Dispatcher, create_celery

    settings = Settings(redis_url=redis_server.url.rsplit("/", 1)[0] + "/6", dispatch_window=4)
    dispatch = Dispatcher(create_celery(settings), client, settings)
    dispatch.shards(MODEL, shards("t", "batch_lost", [(0, 5), (1, 5)]))
    queue = keys.model_queue(MODEL)
    assert client.llen(queue) == 2
    finished = {("batch_lost", 1)}
    is_done = lambda ref: (ref.batch_id, ref.index) in finished  # noqa: E731
    assert dispatch.fair.resend_lost(MODEL, -1, SHARD_TASK, is_done) == 0  # both messages are queued
    client.delete(queue)  # lost with the broker
    assert dispatch.fair.resend_lost(MODEL, -1, SHARD_TASK, is_done) == 1  # shard 1 is done: its place is freed
    assert client.llen(queue) == 1
    assert [(f.ref.batch_id, f.ref.index) for f in dispatch.fair.in_flight(MODEL)] == [("batch_lost", 0)]
