"""/v1/embeddings lines: parsed once at validation, one engine request per input, one OpenAI list object back."""
import base64
import json
import struct

import pytest
from openai.types import CreateEmbeddingResponse

from pagebatch.engine.llm import LLM
from pagebatch.engine.config import EngineConfig
from pagebatch.engine.loop import EngineLoop
from pagebatch.engine.engine import LLMEngine
from pagebatch.jobs.batch.embeddings import EMBEDDINGS, MAX_INPUTS, EmbeddingRequest, to_embedding_request
from pagebatch.jobs.batch.requests import LineError
from pagebatch.jobs.batch.results import RequestContext
from pagebatch.jobs.batch.shard_input import ShardLine
from pagebatch.jobs.batch.validate import Limits, RejectedLine, ValidLine, check_lines
from pagebatch.jobs.pipeline.execute import execute

ENGINE = dict(dtype="float32", device="cpu", max_model_len=128, num_kv_blocks=64)


def test_inputs_take_every_openai_shape():
    assert to_embedding_request({"input": "one"}).inputs == ["one"]
    assert to_embedding_request({"input": ["a", "b"]}).inputs == ["a", "b"]
    assert to_embedding_request({"input": [5, 6, 7]}).inputs == [[5, 6, 7]]
    assert to_embedding_request({"input": [[5], [6, 7]]}).inputs == [[5], [6, 7]]
    mixed = to_embedding_request({"input": ["a", [6, 7]], "model": "m", "user": "u", "encoding_format": "base64",
                                  "dimensions": 16})
    assert mixed.inputs == ["a", [6, 7]] and mixed.encoding_format == "base64" and mixed.params.dimensions == 16
    assert to_embedding_request({"input": "x", "encoding_format": None}).encoding_format == "float"


@pytest.mark.parametrize("body, param, code", [
    ({}, "input", "missing_input"),
    ({"input": ""}, "input", "invalid_parameter"),
    ({"input": []}, "input", "invalid_parameter"),
    ({"input": ["a", ""]}, "input", "invalid_parameter"),
    ({"input": [[1], []]}, "input", "invalid_parameter"),
    ({"input": [1, "a"]}, "input", "invalid_parameter"),
    ({"input": [-1]}, "input", "invalid_parameter"),
    ({"input": [True]}, "input", "invalid_parameter"),
    ({"input": {"text": "a"}}, "input", "invalid_parameter"),
    ({"input": ["a"] * (MAX_INPUTS + 1)}, "input", "invalid_parameter"),
    ({"input": [[1] * 150_001, [2] * 150_000]}, "input", "invalid_parameter"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format", "invalid_parameter"),
    ({"input": "a", "dimensions": 0}, "dimensions", "invalid_parameter"),
    ({"input": "a", "dimensions": "8"}, "dimensions", "invalid_parameter"),
    ({"input": "a", "messages": []}, "messages", "invalid_parameter"),
    ({"input": "a", "truncate_prompt_tokens": 8}, "truncate_prompt_tokens", "unsupported_parameter"),
])
def test_bad_bodies_name_the_parameter(body, param, code):
    with pytest.raises(LineError) as info:
        to_embedding_request(body)
    assert (info.value.param, info.value.code) == (param, code)


def test_validated_lines_survive_the_shard_round_trip():
    limits = Limits(10**6, 100, 10**5, 16)
    lines = [json.dumps({"custom_id": "a", "method": "POST", "url": EMBEDDINGS,
                         "body": {"model": "m", "input": ["x", [1, 2]], "dimensions": 8, "encoding_format": "base64"}}),
             json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}),
             json.dumps({"custom_id": "c", "method": "POST", "url": EMBEDDINGS, "body": {"model": "m", "input": 3}})]
    good, url, shape = check_lines([line.encode() for line in lines], endpoint=EMBEDDINGS, known_models={"m"},
                                   limits=limits)
    assert isinstance(good, ValidLine) and isinstance(good.request, EmbeddingRequest)
    assert isinstance(url, RejectedLine) and url.error.param == "url"
    assert isinstance(shape, RejectedLine) and shape.error.param == "input"
    back = ValidLine.from_shard_line(ShardLine.model_validate_json(good.to_shard_line().model_dump_json()))
    assert back.request == good.request


@pytest.fixture(scope="module")
def loop(tiny_model):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model), **ENGINE)))
    yield loop
    loop.close()


def run(loop, bodies):
    jobs = [ValidLine(i + 1, f"line-{i + 1}", "m", to_embedding_request(b)) for i, b in enumerate(bodies)]
    result = execute(loop, jobs, ctx=RequestContext("batch_x", "tenant-x", "w"), endpoint=EMBEDDINGS, model_name="m",
                     request_prefix="shard-1", poll_s=0.05)
    output = {o["custom_id"]: o["response"]["body"] for o in map(json.loads, (t for _, t in result.output))}
    errors = {e["custom_id"]: e["response"]["body"]["error"] for e in map(json.loads, (t for _, t in result.errors))}
    usage = {u["custom_id"]: u for u in map(json.loads, (t for _, t in result.usage))}
    return output, errors, usage


def test_a_line_of_several_inputs_is_one_list_in_input_order(loop, tiny_model, one_thread):
    texts = ["the review was good", "price", "delivery was slow and the box arrived damaged"]
    output, errors, usage = run(loop, [
        {"input": texts, "model": "m"},
        {"input": texts[::-1], "encoding_format": "base64"},
        {"input": [[5, 6, 7], [8]]},
    ])
    assert not errors
    expected = LLM(str(tiny_model), **ENGINE).embed(texts)
    floats = CreateEmbeddingResponse.model_validate(output["line-1"])
    assert floats.object == "list" and floats.model == "m" and [d.index for d in floats.data] == [0, 1, 2]
    for got, want in zip(floats.data, expected):
        assert got.object == "embedding" and got.embedding == pytest.approx(want.embedding, abs=1e-6)
    packed = output["line-2"]["data"]
    for got, want in zip(packed, expected[::-1]):
        raw = base64.b64decode(got["embedding"])
        assert got["embedding"] == base64.b64encode(raw).decode()
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(want.embedding, abs=1e-6)
    prompt_tokens = sum(o.num_prompt_tokens for o in expected)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == prompt_tokens
    record = usage["line-1"]
    assert (record["prompt_tokens"], record["completion_tokens"], record["finish_reason"]) == (prompt_tokens, 0, "stop")
    assert record["total_time"] > 0 and usage["line-3"]["prompt_tokens"] == 4


def test_engine_rejections_fail_their_line_alone_naming_the_parameter(loop):
    output, errors, usage = run(loop, [
        {"input": ["ok", [5] * 129]},  # longer than the context of 128
        {"input": "ok", "dimensions": 8},  # not a Matryoshka model
        {"input": [[5] * 128]},  # an embedding may fill the whole context
        {"input": [[100_000]]},
    ])
    assert set(output) == {"line-3"}
    assert errors["line-1"]["code"] == "context_length_exceeded" and errors["line-1"]["param"] == "input"
    assert errors["line-1"]["message"].startswith("input[1]: ")
    assert errors["line-2"]["param"] == "dimensions" and errors["line-2"]["code"] == "invalid_request"
    assert errors["line-4"]["param"] == "input" and "vocabulary" in errors["line-4"]["message"]
    assert usage["line-1"]["prompt_tokens"] == 0 and len(usage) == 4
