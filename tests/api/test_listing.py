"""Listing pages newest first with limit / after / has_more; deleting a file removes it."""
import openai
import pytest

from tests.batch_helpers import chat_line, jsonl, submit, upload, wait_status


def test_batches_page_newest_first(stack):
    client = stack.client("f")
    created = [submit(client, [chat_line(f"x{n}", stack.model)]).id for n in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == created[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [created[0]] and not rest.has_more
    assert [b.id for b in client.batches.list(limit=1)] == created[::-1]  # the SDK follows the cursor
    for batch_id in created:
        wait_status(client, batch_id)


def test_files_list_retrieve_delete(stack):
    client = stack.client("g")
    files = [upload(client, jsonl([chat_line(f"x{n}", stack.model)]), name=f"f{n}.jsonl") for n in range(3)]
    listed = client.files.list(limit=2)
    assert [f.id for f in listed.data] == [files[2].id, files[1].id] and listed.has_more
    assert client.files.retrieve(files[0].id).filename == "f0.jsonl"
    assert client.files.retrieve(files[0].id).bytes == len(jsonl([chat_line("x0", stack.model)]))
    assert client.files.delete(files[1].id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(files[1].id)
    assert [f.id for f in client.files.list()] == [files[2].id, files[0].id]


def test_expiry_options_and_list_order_through_the_sdk(stack):
    client = stack.client("o")
    content = jsonl([chat_line("e1", stack.model)])
    expiring = client.files.create(file=("e.jsonl", content), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 7200})
    assert expiring.expires_at == expiring.created_at + 7200
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("e.jsonl", content), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 5})
    batch = client.batches.create(input_file_id=expiring.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  output_expires_after={"anchor": "created_at", "seconds": 3600})
    batch = wait_status(client, batch.id)
    output = client.files.retrieve(batch.output_file_id)
    assert output.expires_at == output.created_at + 3600
    newest_first = [f.id for f in client.files.list(limit=100)]
    oldest_first = [f.id for f in client.files.list(limit=100, order="asc")]
    assert oldest_first == newest_first[::-1]
