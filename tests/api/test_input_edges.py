"""Edges of the API's input on the shared stack: odd numbers in form fields, a line nested too deep to parse,
and the API process itself, which runs without torch."""
import json

import httpx
import pytest

from tests.batch_helpers import chat_line, jsonl, read_jsonl, submit, upload, wait_status

ODD_SECONDS = ["³", "٣٦٠٠", "3600.0", "-3600", " 3600", "0x1000", "9" * 5000, "", "1e4"]


@pytest.mark.parametrize("seconds", ODD_SECONDS, ids=lambda s: f"{len(s)}chars-{s[:6]!r}")
def test_odd_numbers_in_expiry_fields_are_a_400_naming_the_field(stack, seconds):
    """Unicode digits (str.isdigit says yes, int says no), 5,000 digits (past int()'s limit), signs, spaces..."""
    headers = {"Authorization": "Bearer key-e"}
    upload_form = httpx.post(f"{stack.base_url}/files", headers=headers, timeout=30,
                             data={"purpose": "batch", "expires_after[anchor]": "created_at",
                                   "expires_after[seconds]": seconds},
                             files={"file": ("a.jsonl", jsonl([chat_line("x", stack.model)]))})
    assert upload_form.status_code == 400, upload_form.text
    error = upload_form.json()["error"]
    assert error["param"] == "expires_after" and "seconds must be an integer from 3600" in error["message"]

    good = upload(stack.client("e"), jsonl([chat_line("x", stack.model)]))
    created = httpx.post(f"{stack.base_url}/batches", headers=headers, timeout=30,
                         json={"input_file_id": good.id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                               "output_expires_after": {"anchor": "created_at", "seconds": seconds}})
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == "output_expires_after"


def test_a_json_number_of_5000_digits_is_a_400(stack):
    body = ('{"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h", '
            '"output_expires_after": {"anchor": "created_at", "seconds": ' + "9" * 5000 + "}}")
    answer = httpx.post(f"{stack.base_url}/batches", content=body, timeout=30,
                        headers={"Authorization": "Bearer key-e", "content-type": "application/json"})
    assert answer.status_code == 400, answer.text


def test_a_line_nested_too_deep_to_parse_keeps_its_custom_id(stack):
    client = stack.client("e")
    schema = '{"type": "object", "properties": {"a": ' * 500 + '{"type": "string"}' + "}}" * 500  # 1,000 levels
    line = chat_line("deep-1", stack.model, response_format={"type": "json_schema",
                                                             "json_schema": {"name": "x", "schema": "SCHEMA"}})
    text = json.dumps(line).replace('"SCHEMA"', schema)
    with pytest.raises(RecursionError):
        json.loads(text)  # deeper than the parser goes: only a scan can find its custom_id
    batch = submit(client, [chat_line("fine-1", stack.model), text])
    batch = wait_status(client, batch.id, logs=stack.logs)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    [error] = read_jsonl(client, batch.error_file_id)
    assert error["custom_id"] == "deep-1"
    assert error["response"]["body"]["error"]["code"] == "invalid_json"


def test_the_api_process_runs_without_torch(stack):
    """torch costs seconds and hundreds of MB to import; the API needs none of the engine (its sweeps included)."""
    client = stack.client("e")
    wait_status(client, submit(client, [chat_line("t", stack.model)]).id, logs=stack.logs)  # it has swept by now
    with open(f"/proc/{stack.api.proc.pid}/maps") as maps:
        mapped = maps.read()
    assert "libtorch" not in mapped and "/torch/" not in mapped
