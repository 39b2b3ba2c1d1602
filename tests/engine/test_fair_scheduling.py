"""Fair share in the engine's waiting queue: one key's thousands of waiting requests do not hold another's first one."""
import time

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.config import EngineConfig
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.request import Request
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.scheduler import Scheduler
from tests.engine.pool_checks import check_invariants


def request(request_id: str, key: str, max_tokens: int = 1000, prompt_len: int = 4) -> Request:
    req = Request(request_id, [1 + i % 40 for i in range(prompt_len)], SamplingParams(max_tokens=max_tokens))
    req.fairness_key = key
    return req


def step(sched: Scheduler) -> list[Request]:
    """One step as the engine takes it: every scheduled request computes its tokens and, when due, samples one."""
    batch = sched.schedule()
    for req, n in zip(batch.requests, batch.num_new_tokens):
        req.num_computed_tokens += n
        sched.blocks.commit(req)
        if req.num_computed_tokens == req.num_tokens:
            req.token_ids.append(7)
    return batch.requests


def test_a_newcomer_key_is_admitted_next_step_and_keys_do_not_preempt_each_other_back():
    blocks = BlockManager(400, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=64)
    for i in range(300):
        sched.add(request(f"a{i}", "a"))
    for _ in range(3):
        step(sched)
    assert len(sched.running) == 8 and len(sched.waiting) == 292  # a's requests fill every slot

    sched.add(request("b0", "b", max_tokens=5))
    scheduled = step(sched)
    assert "b0" in [r.request_id for r in scheduled]  # admitted in the very next step, ahead of 292 waiting
    assert sched.num_preemptions == 1 and {r.fairness_key for r in sched.running} == {"a", "b"}
    while "b0" in sched.requests:
        for req in list(sched.running):
            if req.num_output_tokens >= req.params.max_tokens:
                sched.finish(req, "length")
        step(sched)
    assert sched.num_preemptions == 1  # a never took the slot back while b ran; b never took a second one
    check_invariants(blocks, list(sched.requests.values()))


def test_two_busy_keys_converge_on_equal_work():
    blocks = BlockManager(400, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=64)
    for i in range(50):
        sched.add(request(f"a{i}", "a"))
    step(sched)
    for i in range(50):
        sched.add(request(f"b{i}", "b"))
    for _ in range(10):
        step(sched)
    keys = [r.fairness_key for r in sched.running]
    assert keys.count("a") == keys.count("b") == 4
    preempted = sched.num_preemptions
    for _ in range(20):
        step(sched)
    assert sched.num_preemptions == preempted  # balanced: no more preemptions


def test_one_key_is_first_come_first_served():
    blocks = BlockManager(400, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    for i in range(10):
        sched.add(request(f"r{i}", ""))
    step(sched)
    assert [r.request_id for r in sched.running] == ["r0", "r1", "r2", "r3"]
    assert [r.request_id for r in sched.waiting] == [f"r{i}" for i in range(4, 10)]


def test_on_a_real_engine_another_keys_request_finishes_while_one_key_floods_it(tiny_model):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), dtype="float32", device="cpu", max_model_len=512,
                                    num_kv_blocks=512, max_num_seqs=16, kernels="torch"))
    loop = EngineLoop(engine)
    try:
        flood = SamplingParams(max_tokens=400, ignore_eos=True)
        futures = [loop.submit(f"text {i}", flood, request_id=f"a{i}", fairness_key="a") for i in range(200)]
        while engine.stats().num_running < 16:
            time.sleep(0.01)
        started = time.monotonic()
        out = loop.submit("quick", SamplingParams(max_tokens=4, ignore_eos=True), request_id="b0",
                          fairness_key="b").result(timeout=60)
        waited = time.monotonic() - started
        done_a = sum(f.done() for f in futures)
        assert out.finish_reason == "length" and len(out.token_ids) == 4
        assert done_a == 0, "b finished behind a's first requests, not ahead of them"
        print(f"b's 4 tokens took {waited:.2f}s with 16 of a's 200 requests running")
    finally:
        loop.close(timeout=5)
