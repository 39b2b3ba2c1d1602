"""`pagebatch run`: the whole pipeline in one process, no Redis and no S3."""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.batch_helpers import chat_line, jsonl


def pagebatch(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 180):
    exe = shutil.which("pagebatch")
    cmd = [exe] if exe else [sys.executable, "-m", "pagebatch.jobs.commands.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEBATCH_")}
    env.update(env_extra or {})
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout)


def read(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_run_writes_results_errors_usage_and_batch_json(tmp_path, tiny_model):
    model = tiny_model.name
    lines = [chat_line(f"ok-{i}", model, f"summarize {i}", max_tokens=3 + i % 4) for i in range(20)]
    lines += [chat_line("ghost", "other-model"), "{broken", chat_line("ok-0", model)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    out = tmp_path / "out"
    done = pagebatch("run", str(tmp_path / "in.jsonl"), "--model", str(tiny_model), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "23 requests: 20 completed, 3 failed" in done.stdout

    batch = json.loads((out / "batch.json").read_text())
    output, errors, usage = read(out / "output.jsonl"), read(out / "errors.jsonl"), read(out / "usage.jsonl")
    assert batch["status"] == "completed" and batch["model"] == model
    assert batch["request_counts"] == {"total": 23, "completed": 20, "failed": 3}
    assert Counter(o["custom_id"] for o in output) == Counter(f"ok-{i}" for i in range(20))
    assert sorted(e["response"]["body"]["error"]["code"] for e in errors) == [
        "duplicate_custom_id", "invalid_json", "model_not_found"]
    assert len(usage) == 23
    assert batch["usage"]["input_tokens"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert batch["usage"]["output_tokens"] == sum(u["completion_tokens"] for u in usage) > 0
    assert all(o["response"]["body"]["object"] == "chat.completion" for o in output)


def test_run_with_no_arguments_uses_the_embedded_demo(tmp_path):
    out = tmp_path / "out"
    done = pagebatch("run", "--out", str(out), "--no-progress",
                     env_extra={"PAGEBATCH_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    batch = json.loads((out / "batch.json").read_text())
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 200
    assert (tmp_path / "cache" / "pagebatch-demo" / "config.json").exists()
    assert len(read(out / "output.jsonl")) == 200


def test_run_fails_a_file_that_is_not_a_batch(tmp_path, tiny_model):
    (tmp_path / "empty.jsonl").write_text("\n")
    out = tmp_path / "out"
    done = pagebatch("run", str(tmp_path / "empty.jsonl"), "--model", str(tiny_model), "--out", str(out))
    assert done.returncode == 1 and "empty_file" in done.stderr
    batch = json.loads((out / "batch.json").read_text())
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "empty_file"


def test_run_embeds_an_embeddings_file(tmp_path, tiny_model):
    model = tiny_model.name
    lines = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": model, "input": [f"document {i}", "the review was good"]}} for i in range(4)]
    lines.append({"custom_id": "packed", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": model, "input": [5, 6, 7], "encoding_format": "base64"}})
    lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {"model": model, "input": []}})
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    out = tmp_path / "out"
    done = pagebatch("run", str(tmp_path / "in.jsonl"), "--model", str(tiny_model), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    batch = json.loads((out / "batch.json").read_text())
    assert batch["endpoint"] == "/v1/embeddings" and batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    output = {o["custom_id"]: o["response"]["body"] for o in read(out / "output.jsonl")}
    assert all(b["object"] == "list" and len(b["data"]) == 2 for k, b in output.items() if k != "packed")
    assert isinstance(output["packed"]["data"][0]["embedding"], str)
    same_text = output["e-0"]["data"][1]["embedding"], output["e-1"]["data"][1]["embedding"]
    assert same_text[0] == pytest.approx(same_text[1], abs=1e-5)
    assert batch["usage"]["input_tokens"] == sum(b["usage"]["prompt_tokens"] for b in output.values())
    assert batch["usage"]["output_tokens"] == 0
    assert read(out / "errors.jsonl")[0]["response"]["body"]["error"]["param"] == "input"
