"""Tool calling in request bodies and response bodies (jobs/batch/tools.py, requests.py, responses.py,
responses_api.py): what each form asks of the engine, the conversation turns that carry calls, and answers the
openai SDK's types accept under strict validation."""
from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from pagebatch.engine.outputs import RequestOutput, ToolCall
from pagebatch.jobs.batch.requests import CHAT, LineError, to_engine_request
from pagebatch.jobs.batch.responses import combined_output, response_body
from pagebatch.jobs.batch.responses_api import RESPONSES, parse_body

WEATHER = {"name": "get_current_weather", "description": "Get the current weather in a given location",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}
TOOLS = [{"type": "function", "function": WEATHER}]
USER = [{"role": "user", "content": "Weather in Dallas?"}]


def chat(**body):
    return to_engine_request(CHAT, {"messages": USER, **body}, default_max_tokens=32)


def test_tool_choice_forms_map_to_one_tool_calling():
    auto = chat(tools=TOOLS).params.tools
    assert (auto.choice, auto.function, auto.parallel) == ("auto", None, True)
    assert json.loads(auto.functions) == [WEATHER]
    assert chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False).params.tools.many is False
    named = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_current_weather"}})
    assert named.params.tools.function == "get_current_weather" and named.params.tools.at_least_one
    # no call asked for: a plain text request, the functions not rendered
    assert chat(tools=TOOLS, tool_choice="none").params.tools is None
    assert chat(tools=[]).params.tools is None and chat(tools=[], tool_choice="auto").params.tools is None
    assert chat(tool_choice="none").params.tools is None


def test_legacy_functions_allow_one_call_answered_as_function_call():
    request = chat(functions=[WEATHER], function_call={"name": "get_current_weather"})
    assert request.legacy_functions and request.params.tools.function == "get_current_weather"
    assert not request.params.tools.many
    assert chat(functions=[WEATHER], function_call="none").params.tools is None


@pytest.mark.parametrize("body, param, message", [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice", "no function"),
    (dict(tools=[{"type": "function", "function": {**WEATHER, "parameters": {"type": "strin"}}}]), "tools",
     "get_current_weather"),
    (dict(tools=TOOLS * 2), "tools", "given twice"),
    (dict(tools=TOOLS, functions=[WEATHER]), "functions", "not both"),
    (dict(tools=TOOLS, parallel_tool_calls="yes"), "parallel_tool_calls", "boolean"),
    (dict(tools=TOOLS, response_format={"type": "json_object"}), "tools", "not both"),
    (dict(function_call={"name": "x"}), "function_call", "needs functions"),
])
def test_bad_tool_forms_name_the_parameter(body, param, message):
    with pytest.raises(LineError) as e:
        chat(**body)
    assert e.value.param == param and message in e.value.message, e.value.message


def test_turns_with_calls_and_results_are_kept_for_the_template():
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_current_weather",
                                                              "arguments": '{"city": "Dallas"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "31 C"}]},
        {"role": "assistant", "content": "It is 31 C."}]
    prompt = to_engine_request(CHAT, {"messages": messages, "tools": TOOLS}, default_max_tokens=8).prompt
    assert prompt[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_current_weather", "arguments": {"city": "Dallas"}}}]}
    assert prompt[2] == {"role": "tool", "content": "31 C", "tool_call_id": "call_9", "name": "get_current_weather"}


def _output(text="", calls=None, reason="stop", tokens=(5, 6, 7)):
    return RequestOutput("r", [1, 2, 3, 4], list(tokens), text, reason, 4, 2, tool_calls=calls)


def test_calls_come_back_in_openais_shape_under_strict_validation():
    calls = [ToolCall("get_current_weather", '{"city":"Dallas"}'), ToolCall("get_current_weather", '{"city":"Oslo"}')]
    body = response_body(CHAT, "m", [_output("Checking.", calls), _output("plain text", [])], "abc", n=2)
    parsed = ChatCompletion.model_validate(body, strict=True)
    first, second = parsed.choices
    assert first.finish_reason == "tool_calls" and first.message.content == "Checking."
    assert [c.function.name for c in first.message.tool_calls] == ["get_current_weather"] * 2
    assert json.loads(first.message.tool_calls[1].function.arguments) == {"city": "Oslo"}
    ids = [c.id for c in first.message.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert ids == [c["id"] for c in response_body(CHAT, "m", _output("Checking.", calls), "abc")["choices"][0]
                   ["message"]["tool_calls"]]  # the same ids on a re-run
    assert second.finish_reason == "stop" and second.message.tool_calls is None
    assert parsed.usage.prompt_tokens == 4 and parsed.usage.completion_tokens == 6  # the prompt once
    legacy = ChatCompletion.model_validate(response_body(CHAT, "m", _output("", calls[:1]), "abc",
                                                         legacy_functions=True), strict=True)
    assert legacy.choices[0].finish_reason == "function_call"
    assert legacy.choices[0].message.function_call.name == "get_current_weather"
    assert combined_output([_output("", calls)]).finish_reason == "tool_calls"  # what the usage log records


def test_a_cut_answer_is_text_with_length():
    body = response_body(CHAT, "m", _output('<tool_call>{"name":"get_cu', None, "length"), "abc")
    choice = ChatCompletion.model_validate(body, strict=True).choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None


def test_completion_prompt_lists_give_one_choice_per_prompt_in_order():
    from openai.types import Completion

    from pagebatch.jobs.batch.requests import COMPLETIONS

    request = to_engine_request(COMPLETIONS, {"prompt": ["a", "b", [5, 6]], "n": 2}, default_max_tokens=8)
    assert [p for p, _ in request.calls()] == ["a", "a", "b", "b", [5, 6], [5, 6]]
    outs = [RequestOutput(f"r{i}", [1] * (i // 2 + 1), [9], f"t{i}", "stop", i // 2 + 1, 0) for i in range(6)]
    body = Completion.model_validate(response_body(COMPLETIONS, "m", outs, "abc", n=2), strict=True)
    assert [c.index for c in body.choices] == list(range(6)) and [c.text for c in body.choices] == [f"t{i}" for i in range(6)]
    assert body.usage.prompt_tokens == 1 + 2 + 3 and body.usage.completion_tokens == 6
    assert combined_output(outs, 2).num_prompt_tokens == 6


def test_responses_function_tools_and_items_round_trip():
    body = {"model": "m", "input": [
        {"role": "user", "content": "Weather in Dallas?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_current_weather", "arguments": '{"city":"Dallas"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "31 C"}],
        "tools": [{"type": "function", **WEATHER, "strict": True}], "tool_choice": "required",
        "parallel_tool_calls": False}
    request = parse_body(RESPONSES, body, 32)
    assert request.params.tools.choice == "required" and not request.params.tools.many
    assert request.prompt[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Dallas"}
    assert request.prompt[2] == {"role": "tool", "content": "31 C", "tool_call_id": "call_1",
                                 "name": "get_current_weather"}
    out = _output("", [ToolCall("get_current_weather", '{"city":"Oslo"}')])
    response = Response.model_validate(response_body(RESPONSES, "m", out, "abc", request.echo), strict=True)
    assert response.status == "completed" and response.tool_choice == "required"
    (item,) = response.output
    assert item.type == "function_call" and item.name == "get_current_weather" and item.call_id.startswith("call_")
    assert response.tools[0].name == "get_current_weather" and response.parallel_tool_calls is False
    with pytest.raises(LineError) as e:
        parse_body(RESPONSES, {"model": "m", "input": "x", "tools": [{"type": "file_search"}]}, 32)
    assert e.value.param == "tools" and e.value.code == "unsupported_parameter"


def test_tool_lines_survive_the_shard_round_trip():
    from pagebatch.jobs.batch.requests import COMPLETIONS
    from pagebatch.jobs.batch.shard_input import decode_shard, encode_shard, new_header
    from pagebatch.jobs.batch.shard_ref import ShardKind
    from pagebatch.jobs.batch.validate import ValidLine

    history = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "31 C"}]
    requests = [to_engine_request(CHAT, {"messages": history, "tools": TOOLS, "tool_choice": "required"}, 8),
                chat(functions=[WEATHER]),
                to_engine_request(COMPLETIONS, {"prompt": ["a", [5, 6]], "n": 2}, 8)]
    for request in requests:
        header = new_header("batch_x", 0, ShardKind.GENERATE, 1)
        stored = encode_shard(header, [ValidLine(1, "c", "m", request).to_shard_line()])
        (line,) = decode_shard(stored, ShardKind.GENERATE)
        again = ValidLine.from_shard_line(line).request
        assert again.calls() == request.calls() and again.legacy_functions == request.legacy_functions
        assert again.params.tools == request.params.tools
