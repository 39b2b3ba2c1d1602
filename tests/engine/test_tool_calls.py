"""Tool calling in the engine (engine/tool_formats.py): each family's format is found from its chat template, the
functions reach the prompt, and every answer that ends is text or calls whose arguments validate.

Random walks through the grammar's masks (the harshest model: any allowed token, uniformly) check the grammar and
the parser of every format on a small byte-level tokenizer; the tiny random-weight model checks the engine path
(template rendering, the constrained answer, RequestOutput.tool_calls) for a Hermes template and a template
without tools (the generic format).
"""
from __future__ import annotations

import json
import random

import jsonschema
import pytest

from pagebatch.engine.make_model import make_tokenizer
from pagebatch.engine.structured import GrammarCompiler, GrammarSpec, allocate_bitmask
from pagebatch.engine.structured_mask import _banned_numpy
from pagebatch.engine.tool_formats import ToolFormat, detect
from pagebatch.engine.tool_spec import ToolCalling

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 12},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"], "additionalProperties": False}}
ADD = {"name": "add", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer", "minimum": 0, "maximum": 999}, "b": {"type": "integer", "minimum": 0, "maximum": 999}},
    "required": ["a", "b"], "additionalProperties": False}}
FUNCTIONS = json.dumps([WEATHER, ADD])
SCHEMAS = {f["name"]: f["parameters"] for f in (WEATHER, ADD)}

HERMES = (
    "{%- if tools %}<|system|>\n# Tools\n<tools>\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "For each call return a JSON object in <tool_call></tool_call> tags.\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|assistant|>\n{%- for call in message.tool_calls %}"
    "<tool_call>\n{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}\n</tool_call>"
    "{%- endfor %}\n{%- elif message.role == 'tool' %}<|user|>\n<tool_response>\n{{ message.content }}\n"
    "</tool_response>\n{%- else %}<|{{ message.role }}|>\n{{ message.content }}\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}")
LLAMA3 = (
    "{%- for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n{{ message.content }}"
    "<|eot_id|>{%- endfor %}{%- if tools %}<|start_header_id|>user<|end_header_id|>\nRespond with a JSON call.\n"
    "{%- for t in tools %}{{ t | tojson }}{%- endfor %}<|eot_id|>{%- endif %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{%- endif %}")
MISTRAL = ("[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- for m in messages %}[INST]{{ m.content }}[/INST]"
           "{%- if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}{%- endif %}{%- endfor %}")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"), 512)
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]", "[ARGS]"]})
    return tok


def _with_template(tokenizer, template: str):
    tokenizer.chat_template = template
    return tokenizer


def test_each_family_is_found_from_its_template(tokenizer):
    assert detect(_with_template(tokenizer, HERMES)).name == "hermes"
    assert detect(_with_template(tokenizer, LLAMA3)).name == "llama3_json"
    mistral = detect(_with_template(tokenizer, MISTRAL))
    assert mistral.name == "mistral" and mistral.call_token == tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")
    from pagebatch.engine.make_model import CHAT_TEMPLATE

    assert detect(_with_template(tokenizer, CHAT_TEMPLATE)).name == "generic"  # no tool format in it


def _walk(compiler, lark: str, seed: int, limit: int = 300) -> list[int]:
    state = compiler.new_state(GrammarSpec("grammar", lark, "tools"))
    bitmask = allocate_bitmask(1, state.words)
    rng, ids = random.Random(seed), []
    vocab = compiler.vocab_size
    for _ in range(limit):
        state.fill_mask(bitmask)
        allowed = (~_banned_numpy(bitmask, vocab)[0]).nonzero().flatten().tolist()
        # lean towards ending: EOS whenever allowed, half the time
        eos = [t for t in allowed if t in compiler.eos_token_ids]
        token = eos[0] if eos and rng.random() < 0.5 else rng.choice(allowed)
        assert state.accept(token) and state.error is None, state.error
        ids.append(token)
        if state.is_terminated():
            return ids
    raise AssertionError(f"no end within {limit} tokens: {state.text(ids)!r}")


FORMATS = [ToolFormat("hermes"), ToolFormat("generic"), ToolFormat("llama3_json"), "mistral", "mistral_v11"]


def _format(name, tokenizer) -> ToolFormat:
    if name == "mistral":
        return ToolFormat("mistral", tokenizer.convert_tokens_to_ids("[TOOL_CALLS]"))
    if name == "mistral_v11":
        return ToolFormat("mistral", tokenizer.convert_tokens_to_ids("[TOOL_CALLS]"),
                          tokenizer.convert_tokens_to_ids("[ARGS]"))
    return name


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f if isinstance(f, str) else f.name)
@pytest.mark.parametrize("calling", [ToolCalling(FUNCTIONS, "required"), ToolCalling(FUNCTIONS, "required", None, False),
                                     ToolCalling(FUNCTIONS, "auto", "add")], ids=["required", "one", "named"])
def test_calls_from_any_walk_through_the_grammar_parse_and_validate(tokenizer, fmt, calling):
    fmt = _format(fmt, tokenizer)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    lark = fmt.grammar(calling)
    for seed in range(6):
        ids = _walk(compiler, lark, seed)
        parsed = fmt.parse(ids, compiler.token_bytes)
        assert parsed is not None, compiler.token_bytes.text(ids)
        content, calls = parsed
        assert calls and content == ""
        if not calling.many:
            assert len(calls) == 1
        for call in calls:
            assert calling.function in (None, call.name)
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f if isinstance(f, str) else f.name)
def test_auto_takes_text_or_a_complete_call(tokenizer, fmt):
    fmt = _format(fmt, tokenizer)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    lark = fmt.grammar(ToolCalling(FUNCTIONS, "auto"))
    eos = tokenizer.eos_token_id
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def run(ids):
        state = compiler.new_state(GrammarSpec("grammar", lark, "tools"))
        return all(state.accept(t) for t in ids) and state.error is None and state.is_terminated()

    assert run(encode("the batch is fine") + [eos])
    call = {"name": "add", "arguments": {"a": 2, "b": 40}}
    if fmt.name == "llama3_json":
        good = encode(json.dumps({"name": "add", "parameters": {"a": 2, "b": 40}}, separators=(",", ":")))
        bad = encode('{"name":"add","parameters":{"a":"two"}}')
    elif fmt.name == "mistral" and fmt.args_token is None:
        good = [fmt.call_token] + encode(json.dumps([call], separators=(",", ":")))
        bad = [fmt.call_token] + encode('[{"name":"nope"}]')
    elif fmt.name == "mistral":
        good = [fmt.call_token] + encode("add") + [fmt.args_token] + encode('{"a":2,"b":40}')
        bad = [fmt.call_token] + encode("sub")
    else:
        good = encode("Let me add. <tool_call>" + json.dumps(call, separators=(",", ":")) + "</tool_call>")
        bad = encode('ok <tool_call>{"name":"add","arguments":{"a":-1')
    assert run(good + [eos])
    content, calls = fmt.parse(good, compiler.token_bytes)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 2, "b": 40})]
    state = compiler.new_state(GrammarSpec("grammar", lark, "tools"))
    assert not all(state.accept(t) for t in bad)  # a call that starts must complete valid


# -- through the engine --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hermes_llm(tmp_path_factory):
    from pagebatch.engine.llm import LLM
    from pagebatch.engine.make_model import make_checkpoint

    path = make_checkpoint(tmp_path_factory.mktemp("models") / "hermes", "qwen2")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text(HERMES)
    return LLM(str(path), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def generic_llm(checkpoint_dir):
    from pagebatch.engine.llm import LLM

    return LLM(checkpoint_dir("llama"), dtype="float32", device="cpu")


MESSAGES = [{"role": "user", "content": "What is the weather in Oslo, and what is 2 + 40?"}]
HISTORY = MESSAGES + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 40}}}]},
    {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "add"}]


@pytest.mark.parametrize("which", ["hermes_llm", "generic_llm"])
def test_engine_answers_required_calls_that_validate(which, request, one_thread):
    from pagebatch.engine.sampling_params import SamplingParams

    llm = request.getfixturevalue(which)
    assert llm.engine.builder.tool_format.name == ("hermes" if which == "hermes_llm" else "generic")
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=96, tools=ToolCalling(FUNCTIONS, "required", None,
                                                                                     i % 2 == 0)) for i in range(6)]
    outs = llm.generate([MESSAGES, HISTORY] * 3, params)
    for out in outs:
        prompt = llm.engine.tokenizer.decode(out.prompt_token_ids)
        assert "get_weather" in prompt and "Current weather in a city" in prompt  # the functions reach the prompt
        if out.finish_reason == "length":
            assert out.tool_calls is None
            continue
        assert out.finish_reason == "stop" and out.tool_calls, out.text
        for call in out.tool_calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    assert sum(o.finish_reason == "stop" for o in outs) >= 3
    history_prompt = llm.engine.tokenizer.decode(outs[1].prompt_token_ids)
    assert "<tool_response>\n42\n</tool_response>" in history_prompt and '"a": 2' in history_prompt


def test_engine_refuses_tools_on_a_text_prompt(generic_llm):
    from pagebatch.engine.sampling_params import SamplingParams

    out = generic_llm.generate(["plain text"], SamplingParams(max_tokens=4, tools=ToolCalling(FUNCTIONS)))[0]
    assert out.finish_reason == "error" and "tools need a chat prompt" in out.error
