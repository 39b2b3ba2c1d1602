"""The shard contract (docs/architecture.md): one ShardRef, a versioned shard-input schema owned by jobs/, old
versions read, newer ones refused, unreadable ones failed after bounded attempts, on the real stack too."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis

from pagebatch.engine.pooling import PoolingParams
from pagebatch.engine.sampling_params import SamplingParams
from pagebatch.jobs.batch.embeddings import to_embedding_request
from pagebatch.jobs.batch.requests import CHAT, EngineRequest, to_engine_request
from pagebatch.jobs.batch.shard_input import (SHARD_INPUT_VERSION, GenerateSpec, PoolingSpec, SamplingSpec,
                                              ShardUnreadable, decode_shard, encode_shard, new_header, salvage_lines)
from pagebatch.jobs.batch.shard_ref import ShardKind, ShardRef, ShardTooNew
from pagebatch.jobs.batch.validate import ValidLine
from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status
from tests.service_fixtures import wait_for

SHARD = 8  # PAGEBATCH_SHARD_SIZE in the test stacks


def test_the_schema_names_every_field_of_the_engine_types():
    """A field added to the engine's types (or EngineRequest) without the schema fails here, not in production."""
    assert set(SamplingSpec.model_fields) == {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(PoolingSpec.model_fields) == {f.name for f in dataclasses.fields(PoolingParams)}
    assert set(GenerateSpec.model_fields) - {"kind", "sampling"} == {
        f.name for f in dataclasses.fields(EngineRequest)} - {"params"}


def test_a_shard_round_trips_and_a_version_1_shard_is_still_read():
    chat = to_engine_request(CHAT, {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 2},
                                    "seed": 3, "n": 2, "response_format": {"type": "json_object"}}, 16)
    # a lone surrogate: valid JSON, not UTF-8; the engine refuses it, the shard must still hold it
    surrogate = to_engine_request(CHAT, {"messages": [{"role": "user", "content": "a\udfffb"}]}, 16)
    lines = [ValidLine(4, "c-4", "m", chat), ValidLine(6, "c-6", "m", surrogate)]
    raw = encode_shard(new_header("batch_x", 0, ShardKind.GENERATE, 2), (job.to_shard_line() for job in lines))
    assert json.loads(raw.split(b"\n")[0])["version"] == SHARD_INPUT_VERSION
    back = [ValidLine.from_shard_line(line) for line in decode_shard(raw, ShardKind.GENERATE)]
    assert back == lines

    # Version 1 (before the schema existed): the engine's dataclasses dumped as they were, no header.
    legacy = {"line": 4, "custom_id": "c-4", "model": "m",
              "request": {"prompt": chat.prompt, "params": dataclasses.asdict(chat.params), "n": 2, "echo": None}}
    embed = to_embedding_request({"input": ["a", [1, 2]], "dimensions": 8})
    legacy_embed = {"line": 5, "custom_id": "e-5", "model": "m",
                    "request": {"kind": "embedding", "inputs": embed.inputs, "params": dataclasses.asdict(embed.params),
                                "encoding_format": "float"}}
    old = [ValidLine.from_shard_line(line) for line in decode_shard(jsonl([legacy, legacy_embed]))]
    assert old == [lines[0], ValidLine(5, "e-5", "m", embed)]


def test_a_newer_version_is_refused_and_garbage_is_unreadable():
    newer = json.dumps({"version": SHARD_INPUT_VERSION + 1, "batch_id": "b", "shard": 0, "kind": "generate",
                        "lines": 0, "what": "a field this worker does not know"}).encode()
    with pytest.raises(ShardTooNew):
        decode_shard(newer)
    for garbage in (b"\x00\x01 not json", b'{"version": 2}\n', b'{"unrelated": 1}\n'):
        with pytest.raises(ShardUnreadable):
            decode_shard(garbage)
    header = new_header("b", 0, ShardKind.GENERATE, 2).model_dump_json().encode()
    salvaged = salvage_lines(header + b'\n{"line": 7, "custom_id": "keep-me", "request": 5}\n{broken\n')
    assert [(s.line, s.custom_id) for s in salvaged] == [(7, "keep-me"), (None, None)]


def test_a_shard_ref_reads_every_version_it_knows_and_refuses_newer():
    ref = ShardRef("batch_1", "t", 3, ShardKind.EMBED)
    assert ShardRef.from_task_args(ref.to_task_args()) == ref
    assert ShardRef.from_task_args(["batch_1", "t", 3]) == ShardRef("batch_1", "t", 3)  # before the contract
    with pytest.raises(ShardTooNew):
        ShardRef.from_task_args([{**ref.to_task_args()[0], "v": 99}])
    for bad in ([], [{"batch_id": "b"}], [{"v": 1, "batch_id": "b", "tenant": "t", "shard": -1}], ["b", "t"]):
        with pytest.raises(ValueError):
            ShardRef.from_task_args(bad)


def test_bad_old_and_newer_shards_on_the_real_stack(make_stack):
    """Shards wait for a worker of their model; meanwhile their stored inputs are replaced by an unparseable one,
    a version-1 one and a newer-version one. The unparseable shard fails its lines after the bounded attempts,
    the old one runs, the newer one is left without an attempt counted until it is readable; and the sweep, which
    meets the unparseable input while it closes an expired batch, goes on deleting expired files."""
    stack = make_stack(PAGEBATCH_MAX_SHARD_ATTEMPTS="2", PAGEBATCH_VISIBILITY_TIMEOUT="3")
    stack.start_worker()  # prepares; serves the stack's model, not "later"
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    r.sadd("pb:models", "later")
    s3 = stack_s3(stack)
    bucket, prefix = stack.env["PAGEBATCH_STORAGE"].removeprefix("s3://").split("/", 1)
    client = stack.client("c")
    lines = [chat_line(f"l{i}", "later", f"text {i}", max_tokens=4) for i in range(4 * SHARD)]
    batch = submit(client, lines)
    expiring = client.batches.create(input_file_id=upload(client, jsonl(lines[:SHARD])).id,
                                     endpoint="/v1/chat/completions", completion_window="4s")
    wait_for(lambda: client.batches.retrieve(batch.id).status == "in_progress", 30, "the batch to be prepared")
    wait_for(lambda: client.batches.retrieve(expiring.id).status == "in_progress", 30, "the other to be prepared")

    def key(batch_id, index):
        return f"{prefix}/tenants/tenant-c/work/{batch_id}/shards/{index:06d}.jsonl"

    stored = {i: s3.get_object(Bucket=bucket, Key=key(batch.id, i))["Body"].read() for i in range(4)}
    header, *rows = stored[1].decode().splitlines()
    legacy = []
    for row in rows:  # shard 1 as version 1 wrote it: the engine's dataclasses, dumped
        line = json.loads(row)
        request = line["request"]
        params = dataclasses.asdict(SamplingParams(**request["sampling"]))
        legacy.append({"line": line["line"], "custom_id": line["custom_id"], "model": line["model"],
                       "request": {"prompt": request["prompt"], "params": params, "n": request["n"], "echo": None}})
    newer = json.loads(header) | {"version": SHARD_INPUT_VERSION + 1}
    s3.put_object(Bucket=bucket, Key=key(batch.id, 0), Body=b"\x00 not a shard \xff\n{also not}\n")
    s3.put_object(Bucket=bucket, Key=key(batch.id, 1), Body=jsonl(legacy))
    s3.put_object(Bucket=bucket, Key=key(batch.id, 2), Body=("\n".join([json.dumps(newer), *stored[2].decode()
                                                                        .splitlines()[1:]]) + "\n").encode())
    s3.put_object(Bucket=bucket, Key=key(expiring.id, 0), Body=b"garbage that no sweep can parse\n")
    # A file whose time has come while the sweep meets that garbage.
    doomed = upload(client, jsonl(lines[:1]))
    r.zadd("pb:files:expiring", {f"tenant-c|{doomed.id}": time.time() - 1})

    expired = wait_status(client, expiring.id, timeout=60, logs=stack.logs)
    assert expired.status == "expired"
    errors = read_jsonl(client, expired.error_file_id)
    assert len(errors) == SHARD and {e["error"]["code"] for e in errors} == {"batch_expired"}
    wait_for(lambda: client.files.list().data and doomed.id not in {f.id for f in client.files.list().data}, 30,
             "the expired file to be deleted")

    stack.start_worker("--served-model-name", "later")
    wait_for(lambda: r.hget(f"pb:batch:{batch.id}:attempts", "0") == "2", 60,
             f"the unreadable shard's two attempts\n{stack.logs()}")
    wait_for(lambda: "3" in r.smembers(f"pb:batch:{batch.id}:done") and "1" in r.smembers(f"pb:batch:{batch.id}:done"),
             60, "the version-1 shard and the untouched one")
    time.sleep(2)  # the newer shard has been offered to the worker, which refused it
    assert r.hget(f"pb:batch:{batch.id}:attempts", "2") is None
    assert "2" not in r.smembers(f"pb:batch:{batch.id}:done")
    assert client.batches.retrieve(batch.id).status == "in_progress"
    s3.put_object(Bucket=bucket, Key=key(batch.id, 2), Body=stored[2])  # a newer worker would have read it
    done = wait_status(client, batch.id, timeout=90, logs=stack.logs)

    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (32, 24, 8)
    output, errors = read_jsonl(client, done.output_file_id), read_jsonl(client, done.error_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"l{i}" for i in range(SHARD, 4 * SHARD))
    assert len(errors) == SHARD and {e["error"]["code"] for e in errors} == {"shard_unreadable"}
    assert "could not be read" in errors[0]["error"]["message"]


def stack_s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")
