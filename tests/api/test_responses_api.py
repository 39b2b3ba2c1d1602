"""/v1/responses batches through the openai SDK: Response objects as OpenAI returns them, usage, text.format."""
import json

import jsonschema
from openai.types.responses import Response

from tests.api.test_structured_outputs import SCHEMA
from tests.batch_helpers import jsonl, read_jsonl, upload, wait_status


def line(custom_id, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def test_responses_batch_answers_with_response_objects(stack):
    client = stack.client("m")
    m = stack.model
    lines = [
        line("plain", model=m, input="Summarize: the box arrived late.", max_output_tokens=12, temperature=0),
        line("messages", model=m, instructions="Answer briefly.", max_output_tokens=40,
             input=[{"role": "user", "content": [{"type": "input_text", "text": "Label: great price"}]}]),
        line("schema", model=m, input="Extract the review.", max_output_tokens=200, temperature=0.7,
             text={"format": {"type": "json_schema", "name": "review", "schema": SCHEMA, "strict": True}}),
        line("tools", model=m, input="hi", tools=[{"type": "web_search"}]),
        line("previous", model=m, input="hi", previous_response_id="resp_123"),
    ]
    file = upload(client, jsonl(lines))
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/responses", completion_window="24h")
    batch = wait_status(client, batch.id, logs=stack.logs)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 2)

    bodies = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(client, batch.output_file_id)}
    plain = Response.model_validate(bodies["plain"])
    assert plain.object == "response" and plain.model == m and plain.output_text
    assert plain.status == "incomplete" and plain.incomplete_details.reason == "max_output_tokens"
    assert plain.usage.output_tokens == 12 and plain.usage.total_tokens == plain.usage.input_tokens + 12
    messages = Response.model_validate(bodies["messages"])
    assert messages.instructions == "Answer briefly." and messages.max_output_tokens == 40
    schema = Response.model_validate(bodies["schema"])
    assert schema.status == "completed"
    jsonschema.validate(json.loads(schema.output_text), SCHEMA)

    errors = {e["custom_id"]: e["response"]["body"]["error"] for e in read_jsonl(client, batch.error_file_id)}
    assert errors["tools"]["param"] == "tools" and errors["tools"]["code"] == "unsupported_parameter"
    assert errors["previous"]["param"] == "previous_response_id"
    usage = read_jsonl(client, batch.to_dict()["usage_file_id"])
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
