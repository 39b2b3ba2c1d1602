"""Answers restricted to a label set, through the API and a worker: only listed labels, the engine's logprobs."""
import json

import pytest

from pagebatch.engine.llm import LLM
from pagebatch.engine.sampling_params import SamplingParams
from tests.batch_helpers import chat_line, completion_line, read_jsonl, submit, wait_status

LABELS = ["positive", "negative", "neutral"]
ENUM = {"type": "json_schema", "json_schema": {"name": "sentiment", "strict": True,
                                               "schema": {"type": "string", "enum": LABELS}}}


def review(i):
    return f"review {i}: the price was {'good' if i % 2 else 'bad'} and delivery took {i} days"


@pytest.fixture(scope="module")
def labeled(stack):
    m, client = stack.model, stack.client("l")
    lines = [chat_line(f"greedy-{i}", m, review(i), temperature=0, structured_outputs={"choice": LABELS},
                       logprobs=True, top_logprobs=2) for i in range(6)]
    lines += [chat_line(f"sampled-{i}", m, review(i), temperature=1.5, seed=i, structured_outputs={"choice": LABELS})
              for i in range(30)]
    lines += [chat_line(f"json-{i}", m, review(i), temperature=0, response_format=ENUM, logprobs=True)
              for i in range(4)]
    lines += [chat_line("json-object", m, response_format={"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}})]  # an invalid schema
    batch = wait_status(client, submit(client, lines).id, logs=stack.logs)
    assert batch.status == "completed", batch
    output = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, batch.output_file_id)}
    errors = {e["custom_id"]: e["response"] for e in read_jsonl(client, batch.error_file_id)}
    return output, errors


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model), dtype="float32", device="cpu")


def content(body):
    return body["choices"][0]["message"]["content"]


def test_only_listed_labels_come_back_greedy_or_sampled(labeled, llm):
    output, _ = labeled
    greedy = [content(output[f"greedy-{i}"]) for i in range(6)]
    sampled = [content(output[f"sampled-{i}"]) for i in range(30)]
    assert set(greedy) <= set(LABELS) and set(sampled) <= set(LABELS)
    assert len(set(sampled)) > 1, "sampling should reach more than one label"
    assert all(output[f"greedy-{i}"]["choices"][0]["finish_reason"] == "stop" for i in range(6))
    # a label costs its own tokens (plus one closing token when it is a prefix of another), not max_tokens
    longest = max(len(llm.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in LABELS)
    assert all(output[f"sampled-{i}"]["usage"]["completion_tokens"] <= longest + 1 for i in range(30))


def test_a_json_schema_enum_answers_with_a_json_string(labeled):
    output, errors = labeled
    for i in range(4):
        text = content(output[f"json-{i}"])
        assert text.startswith('"') and json.loads(text) in LABELS
    refused = errors["json-object"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "response_format"


def test_label_logprobs_are_the_engines(labeled, llm):
    output, _ = labeled
    prompts = [[{"role": "user", "content": review(i)}] for i in range(6)]
    engine = llm.generate(prompts, SamplingParams(temperature=0, choices=LABELS, logprobs=2))
    for i, want in enumerate(engine):
        body = output[f"greedy-{i}"]
        assert content(body) == want.text
        got = body["choices"][0]["logprobs"]["content"]
        assert [t["token"] for t in got] == [lp.token for lp in want.logprobs]
        for token, lp in zip(got, want.logprobs, strict=True):
            assert token["logprob"] == pytest.approx(lp.logprob, abs=1e-4)
            assert [t["token"] for t in token["top_logprobs"]] == [t.token for t in lp.top]


def test_completions_take_a_label_set_too(stack):
    client = stack.client("l")
    lines = [completion_line(f"c{i}", stack.model, review(i), temperature=1.0, seed=i, logprobs=1,
                             structured_outputs={"choice": LABELS}) for i in range(6)]
    batch = wait_status(client, submit(client, lines, endpoint="/v1/completions").id, logs=stack.logs)
    output = read_jsonl(client, batch.output_file_id)
    assert len(output) == 6
    for line in output:
        choice = line["response"]["body"]["choices"][0]
        assert choice["text"] in LABELS and len(choice["logprobs"]["tokens"]) >= 1
