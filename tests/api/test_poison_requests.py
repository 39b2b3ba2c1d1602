"""One tenant's hostile lines never touch another tenant's batch on the same worker (the real stack)."""
import json
import time

import pytest

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status

BIG_LIMITS = {"PAGEBATCH_MAX_UPLOAD_BYTES": str(64 << 20), "PAGEBATCH_MAX_BATCH_BYTES": str(64 << 20),
              "PAGEBATCH_MAX_LINE_BYTES": str(2 << 20)}


def innocent(model, prefix, n):
    return [chat_line(f"{prefix}-{i}", model, f"summarize note {i}", max_tokens=24, ignore_eos=True) for i in range(n)]


def hostile_lines(model):
    labels = {"structured_outputs": {"choice": ["yes", "no"]}}
    bodies = {
        "top-k-huge": {"top_k": 2**63},
        "temperature-tiny-labels": {"temperature": 1e-300, **labels},
        "top-p-tiny-seed-huge": {"top_p": 1e-320, "seed": -2**70},
        "temperature-nan": {"temperature": float("nan")},
        "top-p-inf": {"top_p": float("inf")},
        "logprobs-huge": {"logprobs": True, "top_logprobs": 10**9},
        "max-tokens-huge": {"max_tokens": 2**62},
        "seed-huge": {"seed": 2**200, "temperature": 0.7},
        "stop-many": {"stop": ["x" * 100] * 2_000},
        "labels-empty": {"structured_outputs": {"choice": []}},
        "labels-odd": {"structured_outputs": {"choice": ["\u202e\u0000", "\U0001f600" * 200, "\udfff"]}},
    }
    lines = [json.dumps(chat_line(name, model, "hi", **body), allow_nan=True) for name, body in bodies.items()]
    # A lone surrogate as the whole message (valid JSON, not valid UTF-8 text): the tokenizer cannot take it.
    lines.append('{"custom_id": "lone-surrogate", "method": "POST", "url": "/v1/chat/completions", "body": '
                 '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 8}}' % model)
    return lines


def timed(client, lines, logs):
    started = time.monotonic()
    batch = wait_status(client, submit(client, lines).id, timeout=300, logs=logs)
    return batch, time.monotonic() - started


@pytest.mark.slow
def test_hostile_sampling_values_and_a_lone_surrogate_fail_alone(make_stack):
    stack = make_stack(**BIG_LIMITS)
    stack.start_worker()
    a, b = stack.client("a"), stack.client("b")
    alone, alone_s = timed(a, innocent(stack.model, "alone", 40), stack.logs)
    assert alone.request_counts.completed == 40

    hostile = submit(b, hostile_lines(stack.model))
    together, together_s = timed(a, innocent(stack.model, "beside", 40), stack.logs)
    print(f"innocent 40 lines: {alone_s:.1f}s alone, {together_s:.1f}s beside the hostile batch")
    assert (together.request_counts.completed, together.request_counts.failed) == (40, 0), stack.logs()
    assert together_s < 3 * alone_s + 10, f"{together_s:.1f}s beside the hostile batch vs {alone_s:.1f}s alone"

    hostile = wait_status(b, hostile.id, timeout=120, logs=stack.logs)
    counts = hostile.request_counts
    assert hostile.status == "completed" and counts.completed + counts.failed == counts.total == 12
    answered = read_jsonl(b, hostile.output_file_id) + read_jsonl(b, hostile.error_file_id)
    assert len({line["custom_id"] for line in answered}) == 12
    for line in read_jsonl(b, hostile.error_file_id):
        error = line["response"]["body"]["error"] if line["response"] else line["error"]
        assert error["message"], line
    # The worker and its engine are alive and serve the next batch.
    after, _ = timed(a, innocent(stack.model, "after", 8), stack.logs)
    assert after.request_counts.completed == 8
    assert all(w.alive() for w in stack.workers)


@pytest.mark.slow
def test_megabyte_prompts_do_not_stall_another_tenant(make_stack):
    stack = make_stack(**BIG_LIMITS)
    stack.start_worker()
    a, c = stack.client("a"), stack.client("c")
    _, alone_s = timed(a, innocent(stack.model, "alone", 20), stack.logs)

    huge = [chat_line(f"huge-{i}", stack.model, "lorem ipsum dolor " * 58_000) for i in range(20)]  # ~1 MB each
    hostile = c.batches.create(input_file_id=upload(c, jsonl(huge)).id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    beside, beside_s = timed(a, innocent(stack.model, "beside", 20), stack.logs)
    print(f"innocent 20 lines: {alone_s:.1f}s alone, {beside_s:.1f}s beside 20 x 1 MB prompts")
    assert beside.request_counts.completed == 20
    assert beside_s < 3 * alone_s + 5, f"{beside_s:.1f}s beside 1 MB prompts vs {alone_s:.1f}s alone"
    hostile = wait_status(c, hostile.id, timeout=180, logs=stack.logs)
    assert hostile.request_counts.failed == 20
    codes = {line["response"]["body"]["error"]["code"] for line in read_jsonl(c, hostile.error_file_id)}
    assert codes == {"context_length_exceeded"}
