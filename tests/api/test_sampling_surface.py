"""n choices and penalties through the real stack and the official openai SDK: one body per line with its choices
indexed, usage counting the prompt once and every choice's completion, and the usage log agreeing."""
from openai.types.chat import ChatCompletion

from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status


def test_n_choices_with_penalties_come_back_as_one_body(stack):
    client, m = stack.client("m"), stack.model
    penalized = dict(n=3, seed=4, temperature=1.0, max_tokens=5, ignore_eos=True, presence_penalty=0.8,
                     frequency_penalty=0.4, repetition_penalty=1.1, logit_bias={"3": -100}, min_tokens=2)
    lines = [chat_line("three", m, "the batch model", **penalized),
             chat_line("one", m, "the batch model", **{**penalized, "n": 1}),
             chat_line("tools", m, tools=[{"type": "web_search"}]),  # hosted tools: only function tools are served
             chat_line("too-long", m, "x", max_tokens=10_000)]
    batch = wait_status(client, submit(client, lines).id, logs=stack.logs)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 2)

    output = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, batch.output_file_id)}
    three = ChatCompletion.model_validate(output["three"])
    one = ChatCompletion.model_validate(output["one"])
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in three.choices)
    assert three.choices[0].message.content == one.choices[0].message.content  # choice 0 keeps the line's seed
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    assert three.usage.completion_tokens == 3 * 5 and three.usage.total_tokens == three.usage.prompt_tokens + 15

    errors = {e["custom_id"]: e["response"] for e in read_jsonl(client, batch.error_file_id)}
    assert errors["tools"]["status_code"] == 400
    assert errors["tools"]["body"]["error"]["param"] == "tools"
    assert errors["tools"]["body"]["error"]["code"] == "unsupported_parameter"
    assert errors["too-long"]["body"]["error"]["code"] == "context_length_exceeded"

    usage = {u["custom_id"]: u for u in read_jsonl(client, batch.to_dict()["usage_file_id"])}
    assert (usage["three"]["prompt_tokens"], usage["three"]["completion_tokens"]) == (three.usage.prompt_tokens, 15)
    assert usage["one"]["completion_tokens"] == 5
    assert batch.usage.output_tokens == 20 and batch.usage.input_tokens == 2 * one.usage.prompt_tokens
