"""Faults on the real stack: a SIGKILLed worker, a shard that keeps crashing, Redis restarting mid-batch."""
import time
from collections import Counter

import openai
import pytest
import redis

from tests.batch_helpers import chat_line, read_jsonl, submit

SHARD = 8  # PAGEBATCH_SHARD_SIZE in the test stacks


def lines_for(model, prefix, shards, max_tokens, quick_first_shard=True):
    lines = []
    for shard in range(shards):
        tokens = 2 if (quick_first_shard and shard == 0) else max_tokens
        lines += [chat_line(f"{prefix}-{shard}-{i}", model, f"text {shard} {i}", max_tokens=tokens, ignore_eos=True)
                  for i in range(SHARD)]
    return lines


def poll(client, batch_id, until, timeout=120, what="the batch"):
    """Poll through outages (Redis restarting makes the API answer 503 for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
            if until(batch):
                return batch
        except (openai.APIStatusError, openai.APIConnectionError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def assert_each_once(client, batch, expected_ids):
    output = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in output + errors)
    assert seen == Counter(expected_ids), "every custom_id exactly once"
    return output, errors


def test_a_sigkilled_worker_loses_nothing(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="10")
    first = stack.start_worker()
    client = stack.client("a")
    lines = lines_for(stack.model, "k", shards=6, max_tokens=400)
    batch = submit(client, lines)
    poll(client, batch.id, lambda b: b.request_counts.completed >= SHARD, what="the first shard")
    first.kill()  # SIGKILL: no goodbye, its shards stay unacknowledged in Redis
    killed_at = time.monotonic()

    stack.start_worker()
    attempts_key = f"pb:batch:{batch.id}:attempts"
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    poll(client, batch.id, lambda b: any(int(v) > 1 for v in r.hvals(attempts_key)), timeout=60,
         what="a killed shard to run again")
    assert time.monotonic() - killed_at < 60

    batch = poll(client, batch.id, lambda b: b.status == "completed", what="completion")
    output, errors = assert_each_once(client, batch, [line["custom_id"] for line in lines])
    assert len(output) == len(lines) and not errors
    assert batch.request_counts.completed == len(lines)
    usage_log = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage_log) == len(lines)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage_log)


def test_leases_outlive_the_visibility_timeout_and_crashing_shards_are_bounded(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="3", PAGEBATCH_MAX_SHARD_ATTEMPTS="1")
    first = stack.start_worker()
    client = stack.client("a")
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)

    # Shards that run for several visibility timeouts are not handed to anyone else meanwhile:
    # a second delivery would exceed the one allowed attempt and fail the shard's lines.
    slow = lines_for(stack.model, "slow", shards=2, max_tokens=3000, quick_first_shard=False)
    batch = submit(client, slow)
    started = time.monotonic()
    batch = poll(client, batch.id, lambda b: b.status == "completed")
    assert time.monotonic() - started > 2 * 3, "the shards must outlast the visibility timeout to test anything"
    assert batch.request_counts.completed == len(slow) and batch.request_counts.failed == 0

    # A shard whose worker dies more often than allowed is failed, not retried forever.
    lines = lines_for(stack.model, "crash", shards=3, max_tokens=800)
    batch = submit(client, lines)
    poll(client, batch.id, lambda b: b.request_counts.completed >= SHARD, what="the first shard")
    first.kill()
    stack.start_worker()
    batch = poll(client, batch.id, lambda b: b.status == "completed", what="completion")
    output, errors = assert_each_once(client, batch, [line["custom_id"] for line in lines])
    assert {o["custom_id"] for o in output} == {f"crash-0-{i}" for i in range(SHARD)}
    assert len(errors) == 2 * SHARD and {e["error"]["code"] for e in errors} == {"shard_failed"}
    assert (batch.request_counts.completed, batch.request_counts.failed) == (SHARD, 2 * SHARD)
    assert r.hget(f"pb:batch:{batch.id}:attempts", "1") == "2"


def test_redis_restarting_mid_batch_does_not_lose_the_batch(make_stack):
    stack = make_stack(PAGEBATCH_VISIBILITY_TIMEOUT="10")
    stack.start_worker()
    client = stack.client("a")
    lines = lines_for(stack.model, "r", shards=6, max_tokens=300)
    batch = submit(client, lines)
    before = poll(client, batch.id, lambda b: b.request_counts.completed >= SHARD, what="the first shard")
    assert before.status == "in_progress" and before.request_counts.completed < len(lines)
    stack.redis.restart()  # no persistence: the queue and every live key are gone
    r = redis.Redis.from_url(stack.redis.url)
    assert not r.exists(f"pb:batch:{batch.id}") and not r.exists("unacked")

    batch = poll(client, batch.id, lambda b: b.status == "completed", what="completion after the restart")
    output, errors = assert_each_once(client, batch, [line["custom_id"] for line in lines])
    assert len(output) == len(lines) and not errors
    usage_log = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage_log) == len(lines)
    assert batch.usage.total_tokens == sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage_log)


@pytest.mark.slow
@pytest.mark.parametrize("wipe", [False, True], ids=["aof", "empty"])
def test_redis_sigkilled_mid_batch_the_batch_completes_once(make_stack, wipe):
    """SIGKILL redis-server at ~25% of a batch and restart it (with its AOF, or empty): workers consume again."""
    visibility = 10
    stack = make_stack(appendonly=True, PAGEBATCH_VISIBILITY_TIMEOUT=str(visibility))
    stack.start_worker()
    client = stack.client("a")
    lines = lines_for(stack.model, "k", shards=8, max_tokens=200)
    batch = submit(client, lines)
    poll(client, batch.id, lambda b: b.request_counts.completed >= 2 * SHARD, what="a quarter of the batch")
    stack.redis.restart(down_s=2, kill=True, wipe=wipe)
    restarted = time.monotonic()

    batch = poll(client, batch.id, lambda b: b.status == "completed", timeout=visibility + 60 + 60,
                 what="completion after the restart")
    took = time.monotonic() - restarted
    print(f"redis SIGKILLed and restarted {'empty' if wipe else 'with its AOF'}: batch completed {took:.1f}s later")
    assert took < visibility + 60, stack.logs()
    output, errors = assert_each_once(client, batch, [line["custom_id"] for line in lines])
    assert len(output) == len(lines) and not errors
    assert all(w.alive() for w in stack.workers)
