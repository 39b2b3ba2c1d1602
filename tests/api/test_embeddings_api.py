"""/v1/embeddings batches through the openai SDK against the real stack: OpenAI's list objects, float and base64
vectors equal to an in-process engine's, several inputs per line, bad lines failing alone, embedding-only models."""
import base64
import struct

import pytest
from openai.types import CreateEmbeddingResponse

from pagebatch.engine.llm import LLM
from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.make_model import make_checkpoint
from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status

TEXTS = ["The delivery was fast.", "The box arrived damaged.", "Support never answered."]


def line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def vectors(body):
    """The vectors of a body, base64 ones unpacked (little-endian float32)."""
    out = []
    for item in body["data"]:
        value = item["embedding"]
        if isinstance(value, str):
            raw = base64.b64decode(value)
            value = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        out.append(value)
    return out


def close(got, want):
    assert len(got) == len(want)
    assert got == pytest.approx(want, abs=1e-5)


def test_an_embeddings_batch_answers_openai_lists_that_match_the_engine(stack):
    client = stack.client("v")  # a tenant of its own: other tests list all their tenant owns
    m = stack.model
    ids = [[5, 6, 7, 8], [9, 10]]
    lines = [
        line("floats", model=m, input=TEXTS, encoding_format="float", user="team-1"),
        line("packed", model=m, input=TEXTS[0], encoding_format="base64"),
        line("ids", model=m, input=ids),
        line("dims", model=m, input="hello", dimensions=8),  # not a Matryoshka model
        line("empty", model=m, input=""),
        line("long", model=m, input=[7] * 5000),  # over the model's context of 4096
        line("unknown", model=m, input="hello", temperature=0.5),
    ]
    batch = submit(client, lines, endpoint="/v1/embeddings")
    batch = wait_status(client, batch.id, logs=stack.logs)
    assert batch.status == "completed" and batch.endpoint == "/v1/embeddings"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 4)

    bodies = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, batch.output_file_id)}
    expected = LLM(str(stack.model_path), dtype="float32", device="cpu", num_kv_blocks=64).embed(TEXTS + ids)
    floats = CreateEmbeddingResponse.model_validate(bodies["floats"])
    assert floats.object == "list" and floats.model == m and [d.index for d in floats.data] == [0, 1, 2]
    for got, want in zip(vectors(bodies["floats"]), expected[:3]):
        close(got, want.embedding)
    assert isinstance(bodies["packed"]["data"][0]["embedding"], str)
    close(vectors(bodies["packed"])[0], expected[0].embedding)
    for got, want in zip(vectors(bodies["ids"]), expected[3:]):
        close(got, want.embedding)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(o.num_prompt_tokens for o in expected[:3])
    assert bodies["ids"]["usage"]["prompt_tokens"] == 6

    errors = {e["custom_id"]: e["response"]["body"]["error"] for e in read_jsonl(client, batch.error_file_id)}
    assert {k: (e["code"], e["param"]) for k, e in errors.items()} == {
        "dims": ("invalid_request", "dimensions"), "empty": ("invalid_parameter", "input"),
        "long": ("context_length_exceeded", "input"), "unknown": ("invalid_parameter", "temperature")}
    usage = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert len(usage) == 7 and all(u["completion_tokens"] == 0 for u in usage)
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage) == floats.usage.prompt_tokens + 6 + \
        bodies["packed"]["usage"]["prompt_tokens"]
    assert batch.usage.output_tokens == 0


def test_an_embedding_model_serves_embeddings_and_refuses_generation(make_stack, tmp_path):
    model = make_checkpoint(tmp_path / "tiny-qwen3-embed", "qwen3", num_kv_heads=1, embedding=True, pooling="mean",
                            matryoshka_dimensions=[16, 32, 64])
    stack = make_stack()
    stack.start_worker("--dtype", "float32", model=model)
    client = stack.client("a")
    name = model.name
    batch = submit(client, [line("full", model=name, input=TEXTS), line("short", model=name, input=TEXTS, dimensions=16),
                            line("odd", model=name, input="x", dimensions=20)], endpoint="/v1/embeddings")
    chat = submit(client, [chat_line("chat", name)])
    batch = wait_status(client, batch.id, logs=stack.logs)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    bodies = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, batch.output_file_id)}
    llm = LLM(str(model), dtype="float32", device="cpu", num_kv_blocks=64)
    for got, want in zip(vectors(bodies["full"]), llm.embed(TEXTS)):
        close(got, want.embedding)
    for got, want in zip(vectors(bodies["short"]), llm.embed(TEXTS, PoolingParams(dimensions=16))):
        assert len(got) == 16
        close(got, want.embedding)
    odd = read_jsonl(client, batch.error_file_id)[0]["response"]["body"]["error"]
    assert odd["param"] == "dimensions" and "[16, 32, 64]" in odd["message"]

    chat = wait_status(client, chat.id, logs=stack.logs)
    assert (chat.request_counts.completed, chat.request_counts.failed) == (0, 1)
    refused = read_jsonl(client, chat.error_file_id)[0]["response"]
    assert refused["status_code"] == 400 and "serves embeddings only" in refused["body"]["error"]["message"]
