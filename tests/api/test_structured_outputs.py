"""JSON-schema and JSON-mode answers through the real stack and the openai SDK: every finished line validates."""
import json

import jsonschema

from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["name", "sentiment", "score", "tags"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "review", "strict": True, "schema": SCHEMA}}


def test_json_schema_and_json_object_lines_always_parse(stack):
    client = stack.client("m")
    lines = [chat_line(f"schema-{i}", stack.model, f"review {i}: fine", max_tokens=200, temperature=0.8, seed=i,
                       response_format=RESPONSE_FORMAT) for i in range(8)]
    lines += [chat_line(f"object-{i}", stack.model, f"note {i}", max_tokens=200, temperature=0.8, seed=i,
                        response_format={"type": "json_object"}) for i in range(4)]
    lines += [chat_line("vllm-json", stack.model, "x", max_tokens=200, structured_outputs={"json": SCHEMA})]
    batch = wait_status(client, submit(client, lines).id, logs=stack.logs)
    assert batch.request_counts.completed == len(lines), read_jsonl(client, batch.error_file_id)
    for line in read_jsonl(client, batch.output_file_id):
        choice = line["response"]["body"]["choices"][0]
        if line["custom_id"].startswith("object"):
            # JSON mode bounds nothing: a random-weight model may write one string until max_tokens cuts it
            if choice["finish_reason"] == "stop":
                assert isinstance(json.loads(choice["message"]["content"]), dict)
            continue
        assert choice["finish_reason"] == "stop", line["custom_id"]  # a bounded schema always finishes
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
