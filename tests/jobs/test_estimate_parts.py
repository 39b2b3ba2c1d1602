"""The parts of an estimate on their own: the step-cost fit, the prefix-cache rule, prices, the rate window."""
from __future__ import annotations

import random

import pytest

from pagebatch.engine.block_manager import BlockManager
from pagebatch.engine.request import Request
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.stats import StepCost
from pagebatch.jobs.batch.estimate import Estimate, PrefixCache, Throughput, eta, price
from pagebatch.jobs.batch.rates import RateWindow, eta_seconds
from pagebatch.jobs.batch.results_cursor import CursorError, ResultsCursor
from pagebatch.jobs.settings import Settings


def test_the_step_cost_fit_recovers_what_steps_cost():
    rng = random.Random(0)
    cost = StepCost()
    for _ in range(400):
        prompt, generated = rng.choice([0, 0, 64, 512]), rng.randint(1, 64)
        cost.add(prompt, generated, 0.0002 * prompt + 0.003 * generated + rng.uniform(-1e-4, 1e-4))
    a, b = cost.coefficients()
    assert a == pytest.approx(0.0002, rel=0.05) and b == pytest.approx(0.003, rel=0.05)
    same_mix = StepCost()
    for _ in range(20):
        same_mix.add(10, 10, 0.02)
    assert same_mix.coefficients() == pytest.approx((0.001, 0.001))
    assert StepCost().coefficients() is None


def test_the_prefix_cache_rule_matches_the_engine_s_block_manager():
    rng = random.Random(1)
    shared = [rng.randrange(100) for _ in range(40)]
    prompts = [shared + [rng.randrange(100) for _ in range(rng.randint(0, 30))] for _ in range(6)] + [shared[:32]]
    simulated = PrefixCache(16)
    blocks = BlockManager(64, 16)
    for i, ids in enumerate(prompts):
        request = Request(f"r{i}", ids, SamplingParams())
        hits = blocks.match_prefix(request)
        blocks.admit(request, hits, len(ids))
        request.num_computed_tokens = len(ids)
        blocks.commit(request)
        blocks.release(request)
        assert simulated.serve(ids) == len(hits) * 16, i


def test_prices_and_eta():
    estimate = Estimate(model="m", endpoint="/v1/chat/completions", prompt_tokens=3_000_000, cached_tokens=1_000_000,
                        completion_tokens_max=500_000)
    prices = Settings(prices="m=2:0.5:8").prices["m"]
    cost = price(estimate, prices)
    assert cost["input"] == 4.0 and cost["cached_input"] == 0.5 and cost["output_max"] == 4.0 and cost["total_max"] == 8.5
    assert price(estimate, None) is None
    one = Throughput("w1", 1e-5, 1e-3, 0.5)  # 2e6 * 1e-5 + 250e3 * 1e-3 = 270 s alone
    seconds, how = eta(estimate, [one])
    assert seconds == pytest.approx(270) and how["completion_tokens_expected"] == 250_000
    assert eta(estimate, [one, one])[0] == pytest.approx(135)
    assert eta(estimate, [])[0] is None


def test_the_rate_window_and_eta():
    window = RateWindow(started_at=100.0, window_s=30, min_span_s=2)
    window.add(110.0, 50, 500)  # one sample: the average since the start
    assert window.rates().lines_per_s == pytest.approx(5.0)
    window.add(114.0, 90, 900)
    assert window.rates().lines_per_s == pytest.approx(10.0) and window.rates().tokens_per_s == pytest.approx(100.0)
    assert eta_seconds(100, 10.0) == 10.0 and eta_seconds(0, None) == 0.0 and eta_seconds(5, None) is None


def test_a_cursor_round_trips_and_refuses_what_it_did_not_issue():
    cursor = ResultsCursor(rejected=True, output_offset=123, errors_offset=7)
    for line in (1, 2, 9, 4000):
        cursor.add(line)
    back = ResultsCursor.decode(cursor.encode())
    assert list(back.lines()) == [1, 2, 9, 4000] and back.rejected and (back.output_offset, back.errors_offset) == (123, 7)
    assert ResultsCursor.decode(None).encode() == ResultsCursor().encode()
    for bad in ("x", "AAAA", cursor.encode()[:-3]):
        with pytest.raises(CursorError):
            ResultsCursor.decode(bad)
