"""Request bodies' output constraints -> one GrammarSpec (jobs/batch/structured_outputs.py)."""
from __future__ import annotations

import json

import pytest

from pagebatch.engine.structured import MAX_SPEC_CHARS, GrammarSpec
from pagebatch.jobs.batch.structured_outputs import BODY_KEYS, parse_structured_outputs

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
SCHEMA_TEXT = json.dumps(SCHEMA, separators=(",", ":"))
LABELS = ["positive", "negative", "neutral"]
ENUM = {"type": "string", "enum": LABELS}
JSON_LABELS = json.dumps(['"positive"', '"negative"', '"neutral"'])



def rf_schema(schema, **extra):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, **extra}}


@pytest.mark.parametrize("body, expected", [
    ({}, None),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, GrammarSpec("json_object", "", "response_format")),
    ({"response_format": rf_schema(SCHEMA, strict=True)}, GrammarSpec("json_schema", SCHEMA_TEXT, "response_format")),
    ({"response_format": rf_schema(SCHEMA, strict=False, description="d")},
     GrammarSpec("json_schema", SCHEMA_TEXT, "response_format")),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},  # name is optional here
     GrammarSpec("json_schema", SCHEMA_TEXT, "response_format")),
    # a string enum keeps the label-set fast path, labels JSON-encoded (the answer is a JSON string)
    ({"response_format": rf_schema(ENUM, strict=True)}, GrammarSpec("choice", JSON_LABELS, "response_format")),
    ({"response_format": rf_schema({"enum": LABELS, "description": "d"})},
     GrammarSpec("choice", JSON_LABELS, "response_format")),
    ({"structured_outputs": {"json": SCHEMA}}, GrammarSpec("json_schema", SCHEMA_TEXT, "structured_outputs")),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, GrammarSpec("json_schema", SCHEMA_TEXT, "structured_outputs")),
    ({"structured_outputs": {"json": ENUM}}, GrammarSpec("choice", JSON_LABELS, "structured_outputs")),
    ({"structured_outputs": {"regex": "[a-z]+", "disable_any_whitespace": True}},
     GrammarSpec("regex", "[a-z]+", "structured_outputs")),
    ({"structured_outputs": {"choice": LABELS}}, GrammarSpec("choice", json.dumps(LABELS), "structured_outputs")),
    ({"structured_outputs": {"choice": ["a", "b", "a"]}}, GrammarSpec("choice", '["a", "b"]', "structured_outputs")),
    ({"structured_outputs": {"grammar": 'root ::= "a" | "b"'}},
     GrammarSpec("grammar", 'root ::= "a" | "b"', "structured_outputs")),
    ({"structured_outputs": {"json_object": True, "json": None, "regex": None}},
     GrammarSpec("json_object", "", "structured_outputs")),
    ({"guided_json": SCHEMA}, GrammarSpec("json_schema", SCHEMA_TEXT, "guided_json")),
    ({"guided_json": json.dumps(SCHEMA), "guided_decoding_backend": "xgrammar"},
     GrammarSpec("json_schema", SCHEMA_TEXT, "guided_json")),
    ({"guided_regex": r"\d{3}"}, GrammarSpec("regex", r"\d{3}", "guided_regex")),
    ({"guided_choice": LABELS}, GrammarSpec("choice", json.dumps(LABELS), "guided_choice")),
    ({"guided_grammar": 'start: "x"'}, GrammarSpec("grammar", 'start: "x"', "guided_grammar")),
    ({"response_format": {"type": "text"}, "guided_regex": "a"}, GrammarSpec("regex", "a", "guided_regex")),
])
def test_each_form_maps_to_its_spec(body, expected):
    assert parse_structured_outputs(body) == expected


def test_choice_specs_carry_the_labels_the_engine_takes():
    assert parse_structured_outputs({"response_format": rf_schema(ENUM)}).choices == ['"positive"', '"negative"',
                                                                                      '"neutral"']
    assert parse_structured_outputs({"guided_choice": ["ja", "nein"]}).choices == ["ja", "nein"]


def test_property_order_is_kept():
    schema = {"type": "object", "properties": {"z": {"type": "integer"}, "a": {"type": "integer"}}}
    expected = '{"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"integer"}}}'
    assert parse_structured_outputs({"guided_json": schema}).spec == expected


@pytest.mark.parametrize("body, param, message", [
    # two constraints, even when they agree
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"json_object": True}}, "structured_outputs",
     "give one output constraint; response_format is set too"),
    ({"response_format": rf_schema(ENUM), "structured_outputs": {"choice": ["a"]}}, "structured_outputs",
     "give one output constraint"),
    ({"guided_json": SCHEMA, "guided_regex": "a"}, "guided_regex", "give one output constraint; guided_json"),
    ({"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]}, "guided_choice", "give one output constraint"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "give exactly one of"),
    ({"structured_outputs": {}}, "structured_outputs", "give exactly one of"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs", "structural_tag is not supported"),
    ({"structured_outputs": {"whitespace_pattern": " *", "json_object": True}}, "structured_outputs", "whitespace_pattern"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs", "json_object must be true"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "1 to 1024 labels"),
    ({"structured_outputs": {"choice": ["ok", ""]}}, "structured_outputs", "every label"),
    ({"structured_outputs": {"choice": "ok"}}, "structured_outputs", "1 to 1024 labels"),
    ({"structured_outputs": {"choice": ["x"] * 1025}}, "structured_outputs", "1 to 1024 labels"),
    ({"structured_outputs": {"regex": 5}}, "structured_outputs", "structured_outputs.regex must be a non-empty string"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs", "structured_outputs.json is not valid JSON"),
    ({"structured_outputs": "json"}, "structured_outputs", "must be an object"),
    ({"response_format": "json"}, "response_format", "must be an object"),
    ({"response_format": {"type": "xml"}}, "response_format", "type must be"),
    ({"response_format": {"type": "structural_tag", "structures": [{"begin": "<f>", "schema": {}, "end": "</f>"}],
                          "triggers": ["<f"]}}, "response_format", "type 'structural_tag' is not supported"),
    ({"response_format": {"type": "json_object", "schema": {}}}, "response_format", "unexpected field 'schema'"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema must be an object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format",
     "json_schema.schema is required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "strict": "yes"}}},
     "response_format", "strict must be a boolean"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA, "extra": 1}}},
     "response_format", "unexpected field 'extra'"),
    ({"response_format": rf_schema([1, 2])}, "response_format", "the JSON schema must be an object"),
    ({"guided_json": 5}, "guided_json", "the JSON schema must be an object"),
    ({"guided_choice": [1]}, "guided_choice", "every label"),
    ({"guided_regex": ""}, "guided_regex", "guided_regex must be a non-empty string"),
    ({"guided_decoding_backend": 3, "guided_regex": "a"}, "guided_decoding_backend", "must be a string"),
])
def test_bad_forms_are_refused_naming_the_parameter(body, param, message):
    with pytest.raises(ValueError) as e:
        parse_structured_outputs(body)
    assert str(e.value).startswith(param + ": ") and message in str(e.value), str(e.value)


def test_bounds_on_size_and_nesting():
    big = {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "x" * 60}
                                            for i in range(1000)}}
    for body in ({"response_format": rf_schema(big)}, {"guided_json": json.dumps(big)}):
        with pytest.raises(ValueError, match=r"^(response_format|guided_json): the JSON schema is \d+ characters long"):
            parse_structured_outputs(body)
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    for body in ({"response_format": rf_schema(deep)}, {"structured_outputs": {"json": json.dumps(deep)}}):
        with pytest.raises(ValueError, match=r"^(response_format|structured_outputs): .*nested more than 32 levels"):
            parse_structured_outputs(body)
    with pytest.raises(ValueError, match=r"^guided_regex: the regex is \d+ characters long"):
        parse_structured_outputs({"guided_regex": "a" * (MAX_SPEC_CHARS + 1)})


@pytest.mark.parametrize("body, param, message", [
    ({"response_format": rf_schema({"type": "strin"})}, "response_format", "invalid JSON schema"),
    ({"response_format": rf_schema({"type": "array", "uniqueItems": True})}, "response_format", "uniqueItems"),
    ({"guided_json": {"if": {"type": "string"}, "then": {"minLength": 2}}}, "guided_json", "invalid JSON schema"),
    ({"structured_outputs": {"regex": "(a"}}, "structured_outputs", "invalid regex"),
    ({"guided_grammar": "start: nothing_here"}, "guided_grammar", "invalid grammar"),
])
def test_grammars_are_checked_at_validation(body, param, message):
    with pytest.raises(ValueError) as e:
        parse_structured_outputs(body)
    assert str(e.value).startswith(param + ": ") and message in str(e.value), str(e.value)


def test_a_string_enum_that_is_not_a_plain_label_set_goes_to_the_grammar():
    spec = parse_structured_outputs({"response_format": rf_schema({"type": "string", "enum": ["ok", ""]})})
    assert spec.kind == "json_schema"
    spec = parse_structured_outputs({"response_format": rf_schema({"enum": ["a"], "pattern": "a"})})
    assert spec.kind == "json_schema"


def test_body_keys_cover_every_form():
    assert BODY_KEYS >= {"response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                         "guided_grammar"}
