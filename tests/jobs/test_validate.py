"""Line-by-line validation of batch input files: each bad line alone, whole-file problems as FileError."""
import json

import pytest

from pagebatch.jobs.batch.validate import FileError, Limits, RejectedLine, ValidLine, check_lines

LIMITS = Limits(max_batch_bytes=10_000, max_batch_lines=5, max_line_bytes=2_000, default_max_tokens=16)
CHAT = "/v1/chat/completions"


def line(custom_id="a", url=CHAT, method="POST", **body):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body}).encode()


def verdicts(*raw: bytes, endpoint=CHAT):
    return list(check_lines(list(raw), endpoint=endpoint, known_models={"m"}, limits=LIMITS))


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (json.dumps({"method": "POST", "url": CHAT, "body": {"model": "m"}}).encode(), "missing_custom_id"),
        (line(method="GET"), "invalid_method"),
        (line(url="/v1/embeddings"), "invalid_url"),
        (line(model="nope"), "model_not_found"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": CHAT, "body": {"model": "m"}}).encode(),
         "missing_messages"),
        (line(temperature=-1), "invalid_parameter"),
        (line(max_tokens=0), "invalid_parameter"),
        (line(n=0), "invalid_parameter"),
        (line(top_p="high"), "invalid_parameter"),
        (b"x" * 2_001, "line_too_long"),
    ],
)
def test_each_bad_line_is_rejected_alone(raw, code):
    good, bad, good2 = verdicts(line("first"), raw, line("last"))
    assert isinstance(good, ValidLine) and isinstance(good2, ValidLine)
    assert isinstance(bad, RejectedLine) and bad.line == 2
    assert bad.error.code == code, bad.error.message


def test_duplicate_custom_id_rejects_the_second_occurrence():
    first, second = verdicts(line("same"), line("same"))
    assert isinstance(first, ValidLine)
    assert isinstance(second, RejectedLine) and second.error.code == "duplicate_custom_id"


def test_completions_need_a_prompt_and_accept_token_ids():
    endpoint = "/v1/completions"
    ok = json.dumps({"custom_id": "t", "method": "POST", "url": endpoint,
                     "body": {"model": "m", "prompt": [1, 2, 3]}}).encode()
    missing = json.dumps({"custom_id": "u", "method": "POST", "url": endpoint, "body": {"model": "m"}}).encode()
    good, bad = verdicts(ok, missing, endpoint=endpoint)
    assert isinstance(good, ValidLine)
    assert bad.error.code == "missing_prompt"


def test_blank_lines_are_skipped_and_numbering_is_physical():
    out = verdicts(b"", line("a"), b"   ", b"{bad")
    assert [v.line for v in out] == [2, 4]


@pytest.mark.parametrize(
    "raw, code",
    [
        ([], "empty_file"),
        ([b"", b"  "], "empty_file"),
        ([b"a,b,c", b"1,2,3"], "invalid_file_format"),
        ([line(str(i)) for i in range(6)], "too_many_lines"),
    ],
)
def test_whole_file_problems(raw, code):
    with pytest.raises(FileError) as e:
        list(check_lines(raw, endpoint=CHAT, known_models={"m"}, limits=LIMITS))
    assert e.value.code == code


def test_a_line_too_deep_to_parse_keeps_its_custom_id():
    from pagebatch.jobs.batch.line_scan import top_level_string

    deep = b'{"body": ' + b'{"a": ' * 1200 + b"1" + b"}" * 1200 + b', "custom_id": "deep \\"one\\""}'
    [verdict] = list(check_lines([deep, line("ok")], endpoint=CHAT, known_models={"m"},
                                 limits=Limits(10**7, 5, 10**6, 16)))[:1]
    assert isinstance(verdict, RejectedLine) and verdict.error.code == "invalid_json"
    assert verdict.custom_id == 'deep "one"'
    assert top_level_string(b'{"x": {"custom_id": "nested"}, "y": "custom_id"}', "custom_id") is None
    assert top_level_string(b'{"custom_id": 5}', "custom_id") is None
    assert top_level_string(b'["custom_id", "a"]', "custom_id") is None
    assert top_level_string(b'{"custom_id": "a', "custom_id") is None
