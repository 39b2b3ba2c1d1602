"""Estimates before enqueueing, with SmolLM2 on the real stack: the prompt tokens are the run's, to the token, and
the ETA (from the worker's own measured throughput) is within 2x of how long the run then takes."""
from __future__ import annotations

import time

import httpx

from pagebatch.jobs.commands.estimate import run_estimate
from pagebatch.jobs.settings import Settings
from tests.batch_helpers import chat_line, jsonl, read_jsonl, upload, wait_status

MODEL = "smollm2"
PASSAGES = [
    "The library's new wing opens on Monday with longer hours, a quiet reading room and a small cafe.",
    "Rain is expected through the weekend, with strong winds along the coast and cooler nights inland.",
    "The team shipped the release two days early after fixing the last crash reported by testers.",
    "Ticket prices for the autumn concerts rise by five percent, though students keep their discount.",
]
INSTRUCTION = ("You are a careful assistant. Read the passage and summarize it in one plain sentence, "
               "keeping names and numbers exactly as written.")


def lines_for(n: int, offset: int = 0) -> list[dict]:
    return [chat_line(f"doc-{offset + i}", MODEL, f"{INSTRUCTION}\n\nPassage {offset + i}: {PASSAGES[i % 4]}",
                      max_tokens=24, temperature=0, **({"n": 2, "seed": i} if i % 5 == 0 else {}))
            for i in range(n)]


def test_an_estimate_counts_the_run_s_prompt_tokens_and_times_it(make_stack, smollm2_path):
    stack = make_stack(PAGEBATCH_STATS_INTERVAL_S="0.5",
                       PAGEBATCH_PRICES=f"{MODEL}=0.5:0.05:2")
    stack.start_worker("--served-model-name", MODEL, "--dtype", "float32", model=smollm2_path)
    client = stack.client("a")
    api = httpx.Client(base_url=stack.base_url, headers={"Authorization": "Bearer key-a"}, timeout=120)

    warmup = client.batches.create(input_file_id=upload(client, jsonl(lines_for(12, offset=100))).id,
                                   endpoint="/v1/chat/completions", completion_window="24h")
    assert wait_status(client, warmup.id, timeout=300, logs=stack.logs).status == "completed"
    time.sleep(1.5)  # the worker publishes its measured throughput every 0.5 s

    lines = lines_for(24) + [chat_line("ghost", "no-such-model"), "{oops",
                             chat_line("long", MODEL, "hello", max_tokens=100_000)]
    file_id = upload(client, jsonl(lines)).id
    answer = api.post("/estimates", json={"input_file_id": file_id, "model": MODEL})
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["status"] == "completed" and estimate["object"] == "estimate"
    assert (estimate["lines"], estimate["valid"], estimate["invalid"]) == (27, 24, 3)
    assert sorted(e["code"] for e in estimate["first_errors"]) == [
        "context_length_exceeded", "invalid_json", "model_not_found"]
    assert estimate["completion_tokens_max"] == sum(24 * (2 if i % 5 == 0 else 1) for i in range(24))
    assert estimate["cost"]["total_max"] > 0 and estimate["eta_seconds"] > 0, estimate
    assert api.get(f"/estimates/{estimate['id']}").json()["prompt_tokens"] == estimate["prompt_tokens"]
    assert api.get(f"/estimates/{estimate['id']}", headers={"Authorization": "Bearer key-b"}).status_code == 404
    no_worker = api.post("/estimates", json={"input_file_id": file_id, "model": "nobody-serves-this"})
    assert no_worker.status_code == 404 and no_worker.json()["error"]["param"] == "model"

    started = time.monotonic()
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_status(client, batch.id, timeout=300, logs=stack.logs)
    took = time.monotonic() - started
    usage = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert batch.request_counts.failed == 3
    assert estimate["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage) == batch.usage.input_tokens
    assert estimate["completion_tokens_max"] >= batch.usage.output_tokens
    cached = batch.usage.input_tokens_details.cached_tokens
    assert abs(estimate["cached_tokens"] - cached) <= 0.1 * max(cached, 1), (estimate["cached_tokens"], cached)
    print(f"ETA {estimate['eta_seconds']:.1f}s, run {took:.1f}s; cached tokens {estimate['cached_tokens']} "
          f"estimated, {cached} served")
    assert took / 2 <= estimate["eta_seconds"] <= took * 2, (estimate["eta_seconds"], took, estimate["eta"])

    # `pagebatch estimate` tokenizes the same file to the same numbers in-process, with the checkpoint's tokenizer
    path = stack.logdir / "in.jsonl"
    path.write_bytes(jsonl(lines))
    local = run_estimate(Settings(redis_url=stack.redis.url), path, str(smollm2_path), name=MODEL)
    assert (local.prompt_tokens, local.valid, local.invalid) == (estimate["prompt_tokens"], 24, 3)
    assert local.eta_seconds is not None  # the live worker's throughput, read from the stack's Redis
