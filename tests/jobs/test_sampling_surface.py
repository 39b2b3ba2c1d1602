"""The sampling surface of a batch line: penalties, logit_bias, min_tokens, n choices, unsupported parameters,
and OpenAI's context rule, from the body through `to_engine_request` and `execute` on an EngineLoop."""
import json
import re

import pytest
from openai.types.chat import ChatCompletion

from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.jobs.batch.requests import CHAT, COMPLETIONS, EngineRequest, LineError, derived_seed, to_engine_request
from pagebatch.jobs.batch.results import RequestContext
from pagebatch.jobs.batch.shard_input import GenerateSpec
from pagebatch.jobs.batch.validate import ValidLine
from pagebatch.jobs.pipeline.execute import execute

MSG = [{"role": "user", "content": "x"}]


def chat(**body):
    return to_engine_request(CHAT, {"messages": MSG, **body}, default_max_tokens=16)


def test_penalties_bias_min_tokens_seed_and_n_map_to_the_engine():
    req = chat(presence_penalty=0.5, frequency_penalty=-1, repetition_penalty=1.2, logit_bias={"50": -100, "7": 5},
               min_tokens=3, seed=9, n=4, stop=["a", "b", "c", "d"], max_completion_tokens=20)
    p = req.params
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.min_tokens, p.seed, req.n) == (
        0.5, -1, 1.2, 3, 9, 4)
    assert p.logit_bias == {50: -100, 7: 5} and p.stop == ["a", "b", "c", "d"] and p.max_tokens == 20
    assert p.reject_over_context  # an explicit max_tokens must fit the context; the default is capped
    assert not chat().params.reject_over_context and chat().n == 1
    # a shard stores the request as JSON (its schema, jobs/batch/shard_input.py): logit_bias keys come back as ints
    back = EngineRequest.from_spec(GenerateSpec.model_validate_json(req.to_spec().model_dump_json()))
    assert back == req
    # choices get distinct seeds derived from the line's; choice 0 keeps it
    seeds = [req.choice_params(i).seed for i in range(4)]
    assert seeds[0] == 9 and len(set(seeds)) == 4 and seeds[1] == derived_seed(9, 1)
    assert all(-(2**63) <= s < 2**63 for s in (derived_seed(2**63 - 1, 127), derived_seed(-(2**63), 5)))
    assert chat(n=3).choice_params(2).seed is None  # unseeded: the engine draws a seed per request
    completion = to_engine_request(COMPLETIONS, {"prompt": "x", "n": 2, "best_of": 2}, default_max_tokens=16)
    assert completion.n == 2 and completion.params.max_tokens == 16 and not completion.params.reject_over_context


@pytest.mark.parametrize("body, param, code", [
    (dict(n=0), "n", "invalid_parameter"),
    (dict(n=129), "n", "invalid_parameter"),
    (dict(n=2.5), "n", "invalid_parameter"),
    (dict(presence_penalty=2.5), "presence_penalty", "invalid_parameter"),
    (dict(frequency_penalty="high"), "frequency_penalty", "invalid_parameter"),
    (dict(repetition_penalty=0), "repetition_penalty", "invalid_parameter"),
    (dict(logit_bias={"abc": 1}), "logit_bias", "invalid_parameter"),
    (dict(logit_bias={"5": 300}), "logit_bias", "invalid_parameter"),
    (dict(logit_bias={str(i): 1 for i in range(301)}), "logit_bias", "invalid_parameter"),
    (dict(logit_bias=[1]), "logit_bias", "invalid_parameter"),
    (dict(min_tokens=-1), "min_tokens", "invalid_parameter"),
    (dict(min_tokens=50, max_tokens=10), "min_tokens", "invalid_parameter"),
    (dict(stop=["s"] * 17), "stop", "invalid_parameter"),
    (dict(tools=[{"type": "web_search"}]), "tools", "unsupported_parameter"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "allowed_tools"}),
     "tool_choice", "unsupported_parameter"),
    (dict(functions=[{"name": "no spaces allowed"}]), "functions", "invalid_parameter"),
    (dict(audio={"voice": "alloy"}), "audio", "unsupported_parameter"),
    (dict(modalities=["text", "audio"]), "modalities", "unsupported_parameter"),
    (dict(prediction={"type": "content"}), "prediction", "unsupported_parameter"),
    (dict(web_search_options={}), "web_search_options", "unsupported_parameter"),
    (dict(reasoning_effort="low"), "reasoning_effort", "unsupported_parameter"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages",
     "unsupported_parameter"),
    (dict(messages=[{"role": "tool", "content": "42"}]), "messages", "invalid_parameter"),
    (dict(frobnicate=1), "frobnicate", "invalid_parameter"),
])
def test_bad_and_unsupported_values_name_the_parameter(body, param, code):
    with pytest.raises(LineError) as e:
        chat(**body)
    assert (e.value.param, e.value.code) == (param, code), e.value.message
    assert param in e.value.message
    if code == "unsupported_parameter":
        assert "not supported" in e.value.message


def test_unsupported_parameters_sent_as_null_are_ignored():
    assert chat(tools=None, tool_choice=None, n=None, logit_bias=None, prompt_cache_key="k").n == 1
    with pytest.raises(LineError) as e:
        to_engine_request(COMPLETIONS, {"prompt": "x", "n": 2, "best_of": 3}, default_max_tokens=16)
    assert e.value.param == "best_of"


@pytest.fixture(scope="module")
def loop(tiny_model):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model), dtype="float32", device="cpu", max_model_len=256,
                                             num_kv_blocks=128)))
    yield loop
    loop.close()


def run(loop, bodies, endpoint=CHAT):
    jobs = [ValidLine(i + 1, f"line-{i + 1}", "m", to_engine_request(endpoint, b, default_max_tokens=8))
            for i, b in enumerate(bodies)]
    result = execute(loop, jobs, ctx=RequestContext("batch_x", "tenant-x", "w"), endpoint=endpoint, model_name="m",
                     request_prefix="shard-1", poll_s=0.05)
    def parse(entries):  # (line, JSONL text) entries
        return [json.loads(text) for _, text in entries]

    output = {o["custom_id"]: o["response"]["body"] for o in parse(result.output)}
    errors = {e["custom_id"]: e["response"]["body"]["error"] for e in parse(result.errors)}
    usage = {u["custom_id"]: u for u in parse(result.usage)}
    return output, errors, usage


def test_n_choices_differ_reproduce_and_bill_once_per_prompt(loop):
    seeded = {"messages": [{"role": "user", "content": "the batch model"}], "n": 4, "seed": 11, "temperature": 1.0,
              "max_tokens": 6, "ignore_eos": True, "frequency_penalty": 0.5, "logit_bias": {"3": -100}}
    greedy = {"messages": [{"role": "user", "content": "the batch model"}], "n": 2, "temperature": 0, "max_tokens": 5,
              "ignore_eos": True}
    single = {**seeded, "n": 1}
    output, errors, usage = run(loop, [seeded, greedy, single, {**seeded, "n": 1, "seed": derived_seed(11, 2)}])
    assert not errors
    body = output["line-1"]
    parsed = ChatCompletion.model_validate(body)
    assert [c.index for c in parsed.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in parsed.choices]
    assert len(set(texts)) > 1  # distinct seeds: the choices differ
    assert texts[0] == output["line-3"]["choices"][0]["message"]["content"]  # choice 0 runs with the line's seed
    assert texts[2] == output["line-4"]["choices"][0]["message"]["content"]  # choice i with its derived seed
    assert parsed.usage.completion_tokens == 4 * 6 and parsed.usage.prompt_tokens == output["line-3"]["usage"][
        "prompt_tokens"]
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + 24
    record = usage["line-1"]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (parsed.usage.prompt_tokens, 24)
    assert record["finish_reason"] == "length" and record["total_time"] > 0
    g = output["line-2"]["choices"]
    assert g[0]["message"]["content"] == g[1]["message"]["content"]  # greedy choices agree, as with OpenAI
    again, _, again_usage = run(loop, [seeded])
    assert [c["message"]["content"] for c in again["line-1"]["choices"]] == texts  # reproducible
    assert again_usage["line-1"]["completion_tokens"] == 24


def test_completions_take_n_too(loop):
    output, errors, usage = run(loop, [{"prompt": "once upon", "n": 3, "max_tokens": 4, "seed": 1, "ignore_eos": True,
                                        "presence_penalty": 1.0}], endpoint=COMPLETIONS)
    assert not errors
    assert [c["index"] for c in output["line-1"]["choices"]] == [0, 1, 2]
    assert output["line-1"]["usage"]["completion_tokens"] == 12 == usage["line-1"]["completion_tokens"]


def test_engine_rejections_are_per_line_400s_naming_the_parameter(loop):
    long_prompt = "the batch model token prompt cache " * 30
    output, errors, usage = run(loop, [
        {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 200, "n": 3},
        {"messages": [{"role": "user", "content": long_prompt}]},  # no max_tokens: capped, runs
        {"messages": MSG, "logit_bias": {"99999": 1}},
        {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 200,
         "structured_outputs": {"choice": ["yes", "no"]}},  # a label is exempt
    ])
    assert errors["line-1"]["code"] == "context_length_exceeded" and errors["line-1"]["param"] == "messages"
    assert "256" in errors["line-1"]["message"]
    assert errors["line-3"]["param"] == "logit_bias" and errors["line-3"]["code"] == "invalid_request"
    assert set(output) == {"line-2", "line-4"}
    assert usage["line-1"]["prompt_tokens"] == usage["line-1"]["completion_tokens"] == 0
    assert len(usage) == 4


def test_a_constraint_that_cannot_be_completed_is_an_error_line_never_stop(loop):
    cyclic = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}
    itself = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
    output, errors, usage = run(loop, [
        {"messages": MSG, "max_tokens": 16, "response_format": {"type": "json_schema",
                                                                "json_schema": {"name": "c", "schema": cyclic}}},
        {"messages": MSG, "max_tokens": 16, "guided_json": itself},
        {"messages": MSG, "max_tokens": 16, "structured_outputs": {"regex": "(x{1000}){1000}"}},
        {"messages": MSG, "max_tokens": 16, "structured_outputs": {"regex": "[0-9]{3}"}},
    ])
    params = {"line-1": "response_format", "line-2": "guided_json", "line-3": "structured_outputs"}
    for line, param in params.items():
        assert errors[line]["code"] == "grammar_error" and errors[line]["param"] == param, errors[line]
        assert "cannot be completed" in errors[line]["message"]
        assert usage[line]["finish_reason"] == "error"
    assert output["line-4"]["choices"][0]["finish_reason"] == "stop"
    assert re.fullmatch("[0-9]{3}", output["line-4"]["choices"][0]["message"]["content"])


def test_a_list_of_completion_prompts_gives_each_its_choices_in_order(loop):
    output, errors, usage = run(loop, [{"prompt": ["once upon", "the batch model token", [5, 6, 7]], "n": 2,
                                        "max_tokens": 3, "temperature": 0, "ignore_eos": True},
                                       {"prompt": "the batch model token", "max_tokens": 3, "temperature": 0,
                                        "ignore_eos": True}], endpoint=COMPLETIONS)
    assert not errors
    body = output["line-1"]
    assert [c["index"] for c in body["choices"]] == list(range(6))
    texts = [c["text"] for c in body["choices"]]
    assert texts[2] == texts[3] == output["line-2"]["choices"][0]["text"]  # prompt 1's choices, greedy
    alone = output["line-2"]["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 18 == usage["line-1"]["completion_tokens"]
    assert usage["line-1"]["prompt_tokens"] == body["usage"]["prompt_tokens"] > alone + 3  # each prompt once
