"""EngineCoreClient: the engine steps in its own process and answers exactly as the in-process engine does;
a core that dies fails what waits on it and nothing hangs (test_loop.py runs the shared behaviour on both)."""
import json
import os
import signal
import time

import pytest

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.core_client import EngineCoreClient
from pagebatch.engine.llm import LLM
from pagebatch.engine.loop import EngineDeadError
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.engine.tool_spec import ToolCalling

ADD = {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                     "required": ["a", "b"], "additionalProperties": False}}
CHAT = [{"role": "system", "content": "You label reviews."}, {"role": "user", "content": "The parcel came late."}]


@pytest.fixture(scope="module")
def core(checkpoint_dir):
    client = EngineCoreClient(EngineConfig(model=checkpoint_dir("llama"), dtype="float32", device="cpu"))
    yield client
    client.close()


def test_answers_match_the_in_process_engine(core, checkpoint_dir):
    """Text, chat, a tool request (rendered and tokenized on the client's side), labels and a seeded sample."""
    prompts = ["the review was good", CHAT, CHAT, CHAT, "label: "]
    params = [SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=7, max_tokens=24, tools=ToolCalling(json.dumps([ADD]), "required")),
              SamplingParams(temperature=0.8, seed=3, max_tokens=6, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0, choices=["positive", "negative", "neutral"])]
    expected = LLM(checkpoint_dir("llama"), dtype="float32", device="cpu").generate(prompts, params)
    got = [core.submit(p, sp, request_id=f"m{i}").result(timeout=60) for i, (p, sp) in enumerate(zip(prompts, params))]
    for out, ref in zip(got, expected):
        assert out.prompt_token_ids == ref.prompt_token_ids
        assert (out.token_ids, out.text, out.finish_reason) == (ref.token_ids, ref.text, ref.finish_reason)
        assert out.tool_calls == ref.tool_calls
    # the same alternatives; their values within float32 noise (the two ran in batches of different shapes)
    assert [[a.token_id for a in t.top] for t in got[3].logprobs] == [[a.token_id for a in t.top]
                                                                       for t in expected[3].logprobs]
    assert [a.logprob for t in got[3].logprobs for a in t.top] == pytest.approx(
        [a.logprob for t in expected[3].logprobs for a in t.top], abs=1e-4)


def test_rejections_on_either_side_name_the_problem(core):
    tokenized_here = core.submit([{"role": "user"}], SamplingParams()).result(timeout=10)  # the template's checks
    assert tokenized_here.finish_reason == "error" and "string 'content'" in tokenized_here.error
    checked_there = core.submit("hi", SamplingParams(max_tokens=0)).result(timeout=10)  # SamplingParams.validate
    assert checked_there.finish_reason == "error" and "max_tokens" in checked_there.error
    assert core.submit("hi", SamplingParams(temperature=0, max_tokens=2)).result(timeout=10).finish_reason == "length"


def test_plans_and_stats_come_from_the_core_model(core):
    plan = core.plan_request(CHAT, SamplingParams(max_tokens=7))
    assert plan.max_new_tokens == 7 and plan.prompt_token_ids[-1] == core.tokenizer.encode(
        core.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False))[-1]
    steps = core.steps
    core.submit("count my steps", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)).result(timeout=30)
    assert core.steps >= steps + 3
    assert core.stats().num_running == 0 and core.serving_path()["kernels"]


def test_a_killed_core_fails_what_waits_and_refuses_new_work(checkpoint_dir):
    client = EngineCoreClient(EngineConfig(model=checkpoint_dir("llama"), dtype="float32", device="cpu"))
    waiting = client.submit("x", SamplingParams(max_tokens=100000, ignore_eos=True))
    deadline = time.monotonic() + 30
    while client.steps < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(client._process.pid, signal.SIGKILL)
    with pytest.raises(EngineDeadError, match="exited"):
        waiting.result(timeout=30)
    assert not client.is_alive() and "exited" in str(client.fatal_error)
    with pytest.raises(EngineDeadError):
        client.submit("y")
    client.close(timeout=5)


def test_a_core_that_cannot_load_says_why(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="the engine core could not start"):
        EngineCoreClient(EngineConfig(model=str(tmp_path), device="cpu"))
