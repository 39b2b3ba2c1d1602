"""Result files list lines in input order (as vLLM writes them), however the requests finished."""
from tests.batch_helpers import chat_line, read_jsonl, submit, wait_status


def test_output_errors_and_usage_follow_the_input_order(stack):
    client = stack.client("o")
    lines = []
    for i in range(30):
        if i in (4, 17):
            lines.append(chat_line(f"r{i}", "no-such-model"))
        else:  # long answers first, short ones last: completion order is the reverse of input order
            lines.append(chat_line(f"r{i}", stack.model, f"text {i}", max_tokens=40 - i, ignore_eos=True))
    batch = wait_status(client, submit(client, lines).id, logs=stack.logs)
    ids = [line["custom_id"] for line in lines]
    output = [o["custom_id"] for o in read_jsonl(client, batch.output_file_id)]
    errors = [e["custom_id"] for e in read_jsonl(client, batch.error_file_id)]
    usage = [u["custom_id"] for u in read_jsonl(client, batch.to_dict()["usage_file_id"])]
    assert output == [i for i in ids if i not in ("r4", "r17")]
    assert errors == ["r4", "r17"]
    assert usage == ids
