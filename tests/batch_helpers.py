"""Helpers for driving batches through the openai SDK in tests."""
from __future__ import annotations

import io
import json
import time
from typing import Any

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def chat_line(custom_id: str, model: str, text: str = "hello", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **body}}


def completion_line(custom_id: str, model: str, prompt: Any = "once upon", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": model, "prompt": prompt, "max_tokens": 8, **body}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload(client, content: bytes, name: str = "batch.jsonl"):
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch")


def submit(client, lines: list[Any], endpoint: str = "/v1/chat/completions", **kwargs: Any):
    file = upload(client, jsonl(lines))
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kwargs)


def wait_status(client, batch_id: str, statuses: set[str] = TERMINAL, timeout: float = 120, logs=None):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s"
                                 + (f"\n{logs()}" if logs else ""))
        time.sleep(0.2)


def read_jsonl(client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]
