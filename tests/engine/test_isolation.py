"""A request that makes a step raise fails alone (the test wraps the sampler or the forward pass to raise
for one request id); the engine loop guards everything it applies and never dies silently."""
from __future__ import annotations

import pytest

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineDeadError, EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.engine.sampling_params import SamplingParams
from tests.engine.pool_checks import check_invariants

PROMPTS = [f"document {i}: the price was {'good' if i % 2 else 'bad'} " * (1 + i % 4) for i in range(7)]
PARAMS = [
    SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=11, max_tokens=8, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=5, logprobs=2, ignore_eos=True),
]


@pytest.fixture()
def engine(checkpoint_dir):
    # a small token budget: prompts are prefilled in chunks beside decodes
    return LLMEngine(EngineConfig(model=checkpoint_dir("llama"), dtype="float32", device="cpu", max_num_batched_tokens=48))


def _run(engine: LLMEngine, requests: list[tuple[str, str, SamplingParams]]) -> dict:
    for request_id, prompt, params in requests:
        engine.add_request(prompt, params, request_id=request_id)
    outs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outs[out.request_id] = out
    return outs


def _innocents():
    return [(f"ok-{i}", p, PARAMS[i % len(PARAMS)]) for i, p in enumerate(PROMPTS)]


def _alone(engine: LLMEngine) -> dict:
    return {rid: _run(engine, [(rid, p, sp)])[rid] for rid, p, sp in _innocents()}


def _check_fails_alone(engine, outs, alone, stage: str) -> None:
    bad = outs.pop("poison")
    assert bad.finish_reason == "error" and bad.error_code == "engine_error"
    assert stage in bad.error and "poisoned" in bad.error
    for rid, out in outs.items():
        assert out.ok and out.token_ids == alone[rid].token_ids, rid
        assert [lp.logprob for lp in out.logprobs or []] == pytest.approx([lp.logprob for lp in alone[rid].logprobs or []], abs=1e-4)
    check_invariants(engine.blocks, [])
    assert engine.blocks.num_free_blocks == engine.num_blocks


def test_a_request_that_breaks_sampling_fails_alone(engine):
    alone = _alone(engine)
    real = engine.sampler

    def sampler(logits, requests, allowed):
        if any(r.request_id == "poison" for r in requests):
            raise OverflowError("poisoned sampling parameters")
        return real(logits, requests, allowed)

    engine.sampler = sampler
    requests = _innocents()
    requests.insert(3, ("poison", "a poisoned request", SamplingParams(temperature=0, max_tokens=8)))
    _check_fails_alone(engine, _run(engine, requests), alone, "sampling")


def test_a_request_that_breaks_the_forward_pass_fails_alone(engine):
    alone = _alone(engine)
    real = engine.runner.execute
    calls = {"with_poison": 0}

    def execute(batch):
        if any(r.request_id == "poison" for r in batch.requests):
            calls["with_poison"] += 1
            raise RuntimeError("poisoned forward pass")
        return real(batch)

    engine.runner.execute = execute
    requests = _innocents()
    requests.insert(5, ("poison", "a poisoned request " * 5, SamplingParams(temperature=0, max_tokens=8)))
    _check_fails_alone(engine, _run(engine, requests), alone, "forward pass")
    assert 1 < calls["with_poison"] <= 8, "bisection should narrow the batch down in a few passes"


def test_a_failure_while_admitting_fails_that_request_alone(engine):
    loop = EngineLoop(engine)
    real = engine.admit

    def admit(prepared):
        if prepared.request_id == "poison":
            raise RuntimeError("poisoned admission")
        return real(prepared)

    engine.admit = admit
    try:
        bad = loop.submit("x", SamplingParams(max_tokens=2), request_id="poison")
        good = loop.submit("y", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
        assert bad.result(timeout=30).error_code == "engine_error"
        assert good.result(timeout=30).ok
        assert loop.is_alive()
    finally:
        loop.close()


class Unrecoverable(BaseException):
    pass


def test_a_dying_engine_thread_fails_every_waiter_and_says_why(engine):
    loop = EngineLoop(engine)

    def step():
        raise Unrecoverable("the device is gone")

    engine.step = step
    future = loop.submit("x", SamplingParams(max_tokens=2))
    with pytest.raises(EngineDeadError, match="the device is gone"):
        future.result(timeout=30)
    loop._thread.join(10)
    assert not loop.is_alive()
    assert isinstance(loop.fatal_error, Unrecoverable)
    with pytest.raises(EngineDeadError):
        loop.submit("y")
    loop.close(timeout=1)
