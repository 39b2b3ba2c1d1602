"""Every call needs a key; a tenant sees only its own files and batches (anything else is 404)."""
import httpx
import openai
import pytest

from tests.batch_helpers import chat_line, jsonl, submit, wait_status


def test_missing_or_wrong_keys_are_401(stack):
    base = f"http://127.0.0.1:{stack.api_port}/v1"
    for path in ("/files", "/batches", "/batches/batch_x", "/files/file-x/content"):
        assert httpx.get(base + path).status_code == 401
        response = httpx.get(base + path, headers={"Authorization": "Bearer not-a-key"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        stack.client("zzz").batches.list()


def test_tenants_cannot_see_each_others_objects(stack):
    owner, other = stack.client("d"), stack.client("e")
    batch = submit(owner, [chat_line("only-mine", stack.model)])
    batch = wait_status(owner, batch.id)
    own_files = [batch.input_file_id, batch.output_file_id, batch.to_dict()["usage_file_id"]]

    for file_id in own_files:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            other.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            other.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    assert batch.id not in [b.id for b in other.batches.list()]
    assert not set(own_files) & {f.id for f in other.files.list()}

    # ... and the owner still has all of it
    assert owner.batches.retrieve(batch.id).status == "completed"
    assert {f.id for f in owner.files.list()} >= set(own_files)


def test_object_ids_come_from_the_server(stack):
    client = stack.client("e")
    file = client.files.create(file=("../../etc/passwd", jsonl([chat_line("x", stack.model)])), purpose="batch")
    assert file.id.startswith("file-") and "/" not in file.id and ".." not in file.id
    assert client.files.retrieve(file.id).filename == "../../etc/passwd"  # kept as metadata only
    headers = {"Authorization": "Bearer key-e"}
    for weird in ("file-..%2F..%2Fx", "file-%2e%2e", "file-" + "a" * 300, "batch_x"):
        response = httpx.get(f"http://127.0.0.1:{stack.api_port}/v1/files/{weird}", headers=headers)
        assert response.status_code == 404, weird
