"""`pagebatch run` on a real model shipped as GGUF (SmolLM2-135M-Instruct): real sentences, EOS, the chat template."""
import json

import pytest

from tests.batch_helpers import chat_line, jsonl
from tests.jobs.test_local_run import pagebatch, read


@pytest.mark.slow
def test_run_answers_with_real_text_from_a_gguf_model(tmp_path, smollm2_dir, smollm2_path):
    model = smollm2_path.stem  # the served name of a .gguf file
    lines = [chat_line("capital", model, "What is the capital of France? Answer in one word.", max_tokens=16,
                       temperature=0),
             chat_line("count", model, "Count from one to five, in words.", max_tokens=32, temperature=0)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    done = pagebatch("run", str(tmp_path / "in.jsonl"), "--model", str(smollm2_path), "--out", str(tmp_path / "out"),
                     "--no-progress", timeout=600)
    assert done.returncode == 0, done.stderr
    output = {o["custom_id"]: o["response"]["body"] for o in read(tmp_path / "out" / "output.jsonl")}
    capital = output["capital"]["choices"][0]
    assert "Paris" in capital["message"]["content"] and capital["finish_reason"] == "stop"
    assert output["capital"]["model"] == model
    counted = output["count"]["choices"][0]["message"]["content"].lower()
    assert "3" in counted or "three" in counted
    batch = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}


@pytest.mark.slow
def test_run_extracts_json_that_validates_with_a_real_model(tmp_path, smollm2_dir, smollm2_path):
    import jsonschema

    from tests.api.test_structured_outputs import RESPONSE_FORMAT, SCHEMA

    model = smollm2_path.stem
    reviews = ["Great blender, quiet and strong.", "The zipper broke after a week.", "It is a chair. It works.",
               "Best headphones I have owned!", "Late delivery and a cracked screen.", "Okay value for the price."]
    lines = [chat_line(f"r{i}", model, f"Extract from this review: {text}", max_tokens=96, temperature=0.7, seed=i,
                       response_format=RESPONSE_FORMAT) for i, text in enumerate(reviews)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    done = pagebatch("run", str(tmp_path / "in.jsonl"), "--model", str(smollm2_path), "--out", str(tmp_path / "out"),
                     "--no-progress", timeout=600)
    assert done.returncode == 0, done.stderr
    output = read(tmp_path / "out" / "output.jsonl")
    assert len(output) == len(reviews)
    for line in output:
        choice = line["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


@pytest.mark.slow
def test_run_keeps_every_constraint_on_a_real_model(tmp_path, smollm2_dir, smollm2_path):
    """61 lines from tests/constraint_corpus.py (JSON schema, regex, choice, grammar, tools): every answer that
    ends "stop", "tool_calls" or "function_call" keeps its constraint; the rest ran out of max_tokens."""
    from openai.types.chat import ChatCompletion

    from tests.constraint_corpus import check, lines

    corpus = lines(smollm2_path.stem)
    (tmp_path / "in.jsonl").write_bytes(jsonl(corpus))
    done = pagebatch("run", str(tmp_path / "in.jsonl"), "--model", str(smollm2_path), "--out", str(tmp_path / "out"),
                     "--no-progress", timeout=900)
    assert done.returncode == 0, done.stderr
    output = {o["custom_id"]: o["response"]["body"] for o in read(tmp_path / "out" / "output.jsonl")}
    assert len(output) == len(corpus), read(tmp_path / "out" / "errors.jsonl")
    reasons = []
    for line in corpus:
        body = output[line["custom_id"]]
        ChatCompletion.model_validate(body, strict=True)
        reasons += check(line, body)
    finished = sum(r != "length" for r in reasons)
    assert finished >= 0.75 * len(reasons), reasons  # the bounds keep most answers short: the checks bite
    assert reasons.count("tool_calls") >= 5 and "function_call" in reasons
    usage = read(tmp_path / "out" / "usage.jsonl")
    for record in usage:
        body = output[record["custom_id"]]
        assert (record["prompt_tokens"], record["completion_tokens"]) == (
            body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        assert record["finish_reason"] == body["choices"][0]["finish_reason"] or len(body["choices"]) > 1
