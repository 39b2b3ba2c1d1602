"""Request bodies -> engine requests; engine outputs -> response bodies the openai SDK can parse."""
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from pagebatch.engine.outputs import RequestOutput, TokenLogprob, TopLogprob
from pagebatch.jobs.batch.requests import CHAT, COMPLETIONS, LineError, to_engine_request
from pagebatch.jobs.batch.responses import response_body


def test_chat_body_maps_to_sampling_params():
    body = {"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "END",
            "logprobs": True, "top_logprobs": 2, "user": "ignored"}
    req = to_engine_request(CHAT, body, default_max_tokens=99)
    assert req.prompt == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    p = req.params
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop, p.logprobs) == (7, 0.5, 0.9, 3, ["END"], 2)


def test_defaults():
    chat = to_engine_request(CHAT, {"messages": [{"role": "user", "content": "x"}]}, default_max_tokens=99)
    assert chat.params.max_tokens == 99 and chat.params.logprobs is None
    completion = to_engine_request(COMPLETIONS, {"prompt": ["one prompt"]}, default_max_tokens=99)
    assert completion.prompt == "one prompt" and completion.params.max_tokens == 16


@pytest.mark.parametrize(
    "endpoint, body, param",
    [
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "n": 129}, "n"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "temperature": 500}, "temperature"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 3}, "frequency_penalty"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}, "tools"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
        (COMPLETIONS, {"prompt": "x", "logprobs": 9}, "logprobs"),
        (COMPLETIONS, {"prompt": ["a", 7]}, "prompt"),
        (COMPLETIONS, {"prompt": ["a", "b"], "n": 65}, "prompt"),
        (COMPLETIONS, {"prompt": ""}, "prompt"),
    ],
)
def test_bad_values_name_the_parameter(endpoint, body, param):
    with pytest.raises(LineError) as e:
        to_engine_request(endpoint, body, default_max_tokens=16)
    assert e.value.param == param


def _output(logprobs=None):
    return RequestOutput(request_id="r", prompt_token_ids=[1, 2, 3], token_ids=[5, 6], text="ok!", finish_reason="stop",
                         num_prompt_tokens=3, num_cached_tokens=2, logprobs=logprobs)


def test_chat_response_parses_as_an_openai_chat_completion():
    lps = [TokenLogprob(5, "ok", -0.1, [TopLogprob(5, "ok", -0.1), TopLogprob(7, "no", -2.0)]),
           TokenLogprob(6, "!", -0.2, [TopLogprob(6, "!", -0.2)])]
    parsed = ChatCompletion.model_validate(response_body(CHAT, "m", _output(lps), "abc"))
    assert parsed.choices[0].message.content == "ok!"
    assert parsed.usage.prompt_tokens == 3 and parsed.usage.completion_tokens == 2
    assert parsed.usage.prompt_tokens_details.cached_tokens == 2
    assert [t.token for t in parsed.choices[0].logprobs.content] == ["ok", "!"]
    assert parsed.choices[0].logprobs.content[0].top_logprobs[1].token == "no"


def test_completion_response_parses_as_an_openai_completion():
    lps = [TokenLogprob(5, "ok", -0.1, [TopLogprob(5, "ok", -0.1)]), TokenLogprob(6, "!", -0.2, [])]
    parsed = Completion.model_validate(response_body(COMPLETIONS, "m", _output(lps), "abc"))
    assert parsed.choices[0].text == "ok!" and parsed.choices[0].finish_reason == "stop"
    assert parsed.choices[0].logprobs.text_offset == [0, 2]
    assert parsed.usage.total_tokens == 5


LABELS = ["positive", "negative", "neutral"]
ENUM_SCHEMA = {"type": "json_schema",
               "json_schema": {"name": "label", "strict": True, "schema": {"type": "string", "enum": LABELS}}}


@pytest.mark.parametrize("endpoint, base", [(CHAT, {"messages": [{"role": "user", "content": "x"}]}),
                                            (COMPLETIONS, {"prompt": "x"})])
def test_a_label_set_becomes_engine_choices(endpoint, base):
    plain = to_engine_request(endpoint, {**base, "structured_outputs": {"choice": LABELS}, "stop": ["\n"]}, 16)
    assert plain.params.choices == LABELS and plain.params.stop == []
    as_json = to_engine_request(endpoint, {**base, "response_format": ENUM_SCHEMA}, 16)
    assert as_json.params.choices == ['"positive"', '"negative"', '"neutral"']  # the answer is valid JSON
    assert to_engine_request(endpoint, {**base, "response_format": {"type": "text"}}, 16).params.choices is None


@pytest.mark.parametrize("extra", [
    {"response_format": "json"},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}},
    {"structured_outputs": {"json": {"type": "object"}, "regex": "a"}},
    {"structured_outputs": {"choice": []}},
    {"structured_outputs": {"choice": ["ok", ""]}},
    {"structured_outputs": {"choice": "ok"}},
    {"structured_outputs": {"choice": ["x"] * 1025}},
    {"structured_outputs": {"choice": ["a"]}, "response_format": ENUM_SCHEMA},
])
def test_unsupported_output_constraints_are_a_clear_400(extra):
    with pytest.raises(LineError) as e:
        to_engine_request(CHAT, {"messages": [{"role": "user", "content": "x"}], **extra}, default_max_tokens=16)
    assert e.value.param in ("response_format", "structured_outputs") and e.value.code == "invalid_parameter"
