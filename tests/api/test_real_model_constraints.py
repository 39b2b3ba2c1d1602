"""The constraint corpus (tests/constraint_corpus.py) through the real service on SmolLM2, with the openai SDK:
every answer that ends "stop", "tool_calls" or "function_call" keeps its constraint, every body parses with the
SDK's types under strict validation, function tools in /v1/responses come back as function_call items, and the
usage log agrees with the bodies."""
import json

import jsonschema
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tests.batch_helpers import read_jsonl, submit, wait_status
from tests.constraint_corpus import FORECAST, WEATHER, check, lines


def _response_line(custom_id, model, text, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
            "body": {"model": model, "input": text, "max_output_tokens": 64, "temperature": 0, **body}}


@pytest.mark.slow
def test_the_service_keeps_every_constraint_on_a_real_model(make_stack, smollm2_path, smollm2_dir):
    stack = make_stack()
    stack.start_worker(model=smollm2_path, wait=False)
    stack.wait_worker_ready(stack.workers[-1], timeout=300)
    client, model = stack.client("s"), smollm2_path.stem
    corpus = lines(model)
    function_tools = [{"type": "function", **f} for f in (WEATHER, FORECAST)]
    responses = [
        _response_line("resp-required", model, "What's the weather in Dallas, TX in fahrenheit?", tools=function_tools,
                       tool_choice="required", parallel_tool_calls=False),
        _response_line("resp-named", model, "Forecast for Oslo for 3 days.", tools=function_tools,
                       tool_choice={"type": "function", "name": "get_forecast"}),
        _response_line("resp-auto", model, "Hello there!", tools=function_tools),
    ]
    chat_batch = submit(client, corpus)
    responses_batch = submit(client, responses, endpoint="/v1/responses")
    chat_batch = wait_status(client, chat_batch.id, timeout=900, logs=stack.logs)
    assert chat_batch.request_counts.completed == len(corpus), read_jsonl(client, chat_batch.error_file_id)

    output = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, chat_batch.output_file_id)}
    reasons = []
    for line in corpus:
        body = output[line["custom_id"]]
        ChatCompletion.model_validate(body, strict=True)
        reasons += check(line, body)
    assert sum(r != "length" for r in reasons) >= 0.75 * len(reasons), reasons
    assert reasons.count("tool_calls") >= 5 and "function_call" in reasons
    usage = read_jsonl(client, chat_batch.to_dict()["usage_file_id"])
    assert sum(u["completion_tokens"] for u in usage) == chat_batch.usage.output_tokens
    for record in usage:
        body = output[record["custom_id"]]
        assert (record["prompt_tokens"], record["completion_tokens"]) == (
            body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])

    responses_batch = wait_status(client, responses_batch.id, timeout=300, logs=stack.logs)
    assert responses_batch.request_counts.completed == len(responses)
    bodies = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, responses_batch.output_file_id)}
    parameters = {f["name"]: f["parameters"] for f in (WEATHER, FORECAST)}
    for custom_id in ("resp-required", "resp-named"):
        response = Response.model_validate(bodies[custom_id], strict=True)
        if response.status == "incomplete":
            continue
        calls = [item for item in response.output if item.type == "function_call"]
        assert calls and (custom_id != "resp-named" or {c.name for c in calls} == {"get_forecast"})
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), parameters[call.name])
    assert Response.model_validate(bodies["resp-auto"], strict=True).tools[0].name == "get_current_weather"
