"""Fair share on the real stack: a small batch behind another tenant's big one finishes within a few shard-times."""
import time

import pytest

from tests.batch_helpers import chat_line, submit, wait_status
from tests.jobs.test_faults import poll

SHARD = 8  # PAGEBATCH_SHARD_SIZE in the test stacks


@pytest.mark.slow
def test_a_small_batch_is_not_queued_behind_another_tenants_big_batch(make_stack):
    stack = make_stack(PAGEBATCH_DISPATCH_WINDOW="4")
    stack.start_worker()
    big_client, small_client = stack.client("a"), stack.client("b")
    big_lines = [chat_line(f"big-{i}", stack.model, f"doc {i}", max_tokens=160, ignore_eos=True) for i in range(296)]
    big = submit(big_client, big_lines)
    started = time.monotonic()
    poll(big_client, big.id, lambda b: b.request_counts.completed >= 2 * SHARD, what="the big batch to get going")
    shard_time = (time.monotonic() - started) / 2  # ~4 shards run at once, so this overestimates a shard-time

    submitted = time.monotonic()
    small = submit(small_client, [chat_line(f"small-{i}", stack.model, f"note {i}", max_tokens=48, ignore_eos=True)
                                  for i in range(10)])
    small = wait_status(small_client, small.id, timeout=300, logs=stack.logs)
    waited = time.monotonic() - submitted
    big_now = big_client.batches.retrieve(big.id)
    print(f"small batch: {waited:.1f}s after submit, shard-time <= {shard_time:.1f}s; "
          f"big batch {big_now.request_counts.completed}/{len(big_lines)} done")
    assert small.status == "completed" and small.request_counts.completed == 10
    assert big_now.status == "in_progress" and big_now.request_counts.completed < len(big_lines) // 2
    assert waited < 6 * shard_time + 10
    big = wait_status(big_client, big.id, timeout=600, logs=stack.logs)
    assert big.request_counts.completed == len(big_lines)
