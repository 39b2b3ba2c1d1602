"""EngineLoop: a long-lived engine fed from several threads, with aborts and live stats; the same tests run
against EngineCoreClient, whose engine steps in a process of its own."""
import threading
import time

import pytest

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.core_client import EngineCoreClient
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.sampling_params import SamplingParams


@pytest.fixture(params=["thread", "process"])
def loop(request, checkpoint_dir):
    config = EngineConfig(model=checkpoint_dir("llama"), dtype="float32", device="cpu")
    loop = EngineLoop(LLMEngine(config)) if request.param == "thread" else EngineCoreClient(config)
    yield loop
    loop.close()


def test_requests_from_many_threads_all_finish_with_engine_results(loop, checkpoint_dir):
    from pagebatch.engine.llm import LLM

    prompts = [f"document {i}: " + "the review was good " * (i % 7) for i in range(48)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    futures = {}

    def feed(chunk):
        for i in chunk:
            futures[i] = loop.submit(prompts[i], params, request_id=f"t-{i}")
            time.sleep(0.001)

    threads = [threading.Thread(target=feed, args=(range(k, 48, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {i: f.result(timeout=60) for i, f in futures.items()}
    expected = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu").generate(prompts, params)
    assert [results[i].token_ids for i in range(48)] == [o.token_ids for o in expected]
    assert all(r.request_id == f"t-{i}" for i, r in results.items())
    assert all(r.metrics.time_to_first_token is not None for r in results.values())
    stats = loop.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0
    assert stats.generation_tokens_total == 48 * 6


def test_abort_resolves_the_future_and_frees_blocks(loop):
    long = loop.submit("hello", SamplingParams(temperature=0, max_tokens=3000, ignore_eos=True), request_id="long")
    deadline = time.time() + 30
    while loop.stats().generation_tokens_total < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert loop.stats().num_running == 1 and loop.stats().kv_blocks_used > 0
    loop.abort("long")
    out = long.result(timeout=10)
    assert out.finish_reason == "abort" and 0 < len(out.token_ids) < 3000
    assert loop.stats().kv_blocks_used == 0
    ok = loop.submit("again", SamplingParams(temperature=0, max_tokens=2)).result(timeout=10)
    assert ok.finish_reason == "length"


def test_bad_request_resolves_with_an_error(loop):
    out = loop.submit("", SamplingParams()).result(timeout=10)
    assert out.finish_reason == "error" and "empty" in out.error


def test_duplicate_in_flight_id_is_refused(loop):
    loop.submit("x", SamplingParams(max_tokens=200, ignore_eos=True), request_id="same")
    with pytest.raises(ValueError, match="already in flight"):
        loop.submit("y", SamplingParams(), request_id="same")


def test_close_aborts_what_is_left(loop):
    fut = loop.submit("x", SamplingParams(max_tokens=100000, ignore_eos=True))
    loop.close()
    assert fut.result(timeout=10).finish_reason in ("abort", "length")
    with pytest.raises(RuntimeError, match="closed"):
        loop.submit("y")


def test_padded_decode_path_matches_unpadded(checkpoint_dir):
    """The CUDA-graph decode path's padding (scratch block, ladder sizes) run eagerly on CPU."""
    from pagebatch.engine.llm import LLM

    prompts = [f"line {i} " * (1 + i) for i in range(11)]  # 11 sequences pad up to 16
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    plain = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu").generate(prompts, params)
    padded = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu", max_num_seqs=16)
    engine = padded.engine
    engine.runner.use_decode_graphs(16, engine.max_model_len, capture=False)
    assert [o.token_ids for o in padded.generate(prompts, params)] == [o.token_ids for o in plain]
    graphs = engine.runner.decode_graphs
    assert graphs.context_lens[:11].min() > 1, "decode steps must have gone through the padded path"
    assert graphs.context_lens[11:16].tolist() == [1] * 5
