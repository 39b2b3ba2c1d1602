"""Drive the scheduler and block pool directly for thousands of steps: no leak, no deadlock, no drop."""
import random

import pytest

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.request import Request
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.scheduler import Scheduler
from tests.engine.pool_checks import check_invariants


def _simulate(seed: int, steps: int, num_blocks: int, prefix_caching: bool, keys: tuple[str, ...] = ("",)) -> dict:
    rng = random.Random(seed)
    blocks = BlockManager(num_blocks, block_size=4, enable_prefix_caching=prefix_caching)
    sched = Scheduler(blocks, max_num_seqs=12, max_num_batched_tokens=40)
    shared = [rng.randrange(50) for _ in range(24)]
    live: dict[str, Request] = {}
    finished: set[str] = set()
    submitted = 0
    stats = {"preempted": 0, "aborted": 0, "finished": 0, "cache_hits": 0}
    for step in range(steps * 10):
        if step >= steps and not sched.has_work():
            break
        if rng.random() < 0.25 and step < steps:
            n = rng.randint(1, 40)
            prompt = (shared[: rng.randint(0, 24)] if rng.random() < 0.5 else []) + [rng.randrange(50) for _ in range(n)]
            req = Request(f"r{submitted}", prompt, SamplingParams(max_tokens=rng.randint(1, 30)))
            req.fairness_key = rng.choice(keys)
            submitted += 1
            live[req.request_id] = req
            sched.add(req)
        if live and rng.random() < 0.03:
            victim = live.pop(rng.choice(sorted(live)))
            sched.finish(victim)
            stats["aborted"] += 1
            finished.add(victim.request_id)
        batch = sched.schedule()
        stats["preempted"] += len(batch.preempted)
        for req, n in zip(batch.requests, batch.num_new_tokens):
            assert n >= 1
            req.num_computed_tokens += n
            assert req.num_computed_tokens <= len(req.block_table) * 4
            blocks.commit(req)
            if req.num_computed_tokens == req.num_tokens:
                req.token_ids.append(rng.randrange(50))
                if req.num_output_tokens >= req.params.max_tokens:
                    live.pop(req.request_id)
                    sched.finish(req)
                    finished.add(req.request_id)
                    stats["finished"] += 1
                    stats["cache_hits"] += bool(req.num_cached_tokens)
        assert sum(batch.num_new_tokens) <= 40 and len(sched.running) <= 12
        if sched.has_work():
            assert batch, "the scheduler stalled with work queued"
        check_invariants(blocks, list(sched.requests.values()))
    assert not live and not sched.has_work(), "requests were left behind: the scheduler livelocked"
    assert len(finished) == submitted
    check_invariants(blocks, [])
    assert blocks.num_free_blocks == num_blocks
    return stats


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_random_arrivals_aborts_and_preemptions_leak_nothing(seed, prefix_caching):
    stats = _simulate(seed, steps=3000, num_blocks=24, prefix_caching=prefix_caching)
    assert stats["preempted"] > 10 and stats["aborted"] > 10 and stats["finished"] > 100
    if prefix_caching:
        assert stats["cache_hits"] > 10


@pytest.mark.parametrize("seed", [0, 1])
def test_fair_share_between_keys_leaks_nothing_and_never_stalls(seed):
    """Requests of three fairness keys: preemptions for fair share keep every invariant and finish every request."""
    stats = _simulate(seed, steps=3000, num_blocks=24, prefix_caching=True, keys=("a", "b", "c"))
    assert stats["finished"] > 100


def test_shared_prefix_blocks_are_ref_counted_and_evicted_lru():
    blocks = BlockManager(6, block_size=2)
    a = Request("a", [1, 2, 3, 4, 5], SamplingParams())
    blocks.admit(a, blocks.match_prefix(a), 5)
    a.num_computed_tokens = 5
    blocks.commit(a)
    b = Request("b", [1, 2, 3, 4, 9], SamplingParams())
    hits = blocks.match_prefix(b)
    assert hits == a.block_table[:2]
    blocks.admit(b, hits, 5)
    assert [blocks.ref_counts[x] for x in hits] == [2, 2]
    blocks.release(a)
    blocks.release(b)
    check_invariants(blocks, [])
    assert blocks.num_cached_free_blocks == 2  # [1,2] and [3,4]; partial blocks are not cached
    c = Request("c", [7, 7, 7, 7, 7, 7, 7, 7, 7, 7], SamplingParams())
    blocks.admit(c, blocks.match_prefix(c), 10)  # needs 5 of the 6 blocks: uncached ones go first
    assert blocks.num_cached_free_blocks == 1
    d = Request("d", [1, 2, 3, 4, 0], SamplingParams())
    assert blocks.match_prefix(d) == hits[:1]  # a prefix is freed tail first, so [1,2] outlives [3,4]


def test_fully_cached_prompt_still_computes_its_last_token():
    blocks = BlockManager(8, block_size=2)
    a = Request("a", [1, 2, 3, 4], SamplingParams())
    blocks.admit(a, [], 4)
    a.num_computed_tokens = 4
    blocks.commit(a)
    same = Request("b", [1, 2, 3, 4], SamplingParams())
    assert len(blocks.match_prefix(same)) == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_update_owns_progress_and_frees_finished_and_failed_requests(seed):
    """The engine's path: schedule -> (tokens for the sampled rows) -> update; some rows fail."""
    from pagebatch.engine.sampler import SampledToken

    rng = random.Random(seed)
    blocks = BlockManager(24, block_size=4)
    sched = Scheduler(blocks, max_num_seqs=12, max_num_batched_tokens=40, eos_token_ids={0}, max_model_len=64)
    submitted, reasons = 0, []
    for step in range(3000):
        if step < 2000 and rng.random() < 0.25:
            prompt = [rng.randrange(1, 50) for _ in range(rng.randint(1, 40))]
            sched.add(Request(f"r{submitted}", prompt, SamplingParams(max_tokens=rng.randint(1, 30))))
            submitted += 1
        if not sched.has_work():
            continue
        batch = sched.schedule()
        assert all(s == (r.num_computed_tokens + n == r.num_tokens)
                   for r, n, s in zip(batch.requests, batch.num_new_tokens, batch.sample))
        failed = {r.request_id: "boom" for r in batch.requests if rng.random() < 0.01}
        tokens = {r.request_id: SampledToken(rng.randrange(50), None) for r in batch.sampled_requests}
        for done in sched.update(batch, tokens, failed):
            reasons.append(done.reason)
            assert done.request.block_table == [] and done.request.request_id not in sched.requests
            assert (done.reason == "error") == (done.request.request_id in failed)
        check_invariants(blocks, list(sched.requests.values()))
    assert not sched.has_work() and len(reasons) == submitted
    assert {"stop", "length", "error"} <= set(reasons)
    check_invariants(blocks, [])
    assert blocks.num_free_blocks == 24
