"""Constrained lines written in the spirit of public examples, and the check every answer must pass.

The lines follow vLLM's structured-output examples (a car description schema, an email regex, a sentiment choice,
the SQL grammar) and tool-calling examples (the current-weather function), and the OpenAI cookbook (the math tutor,
event and paper extraction, moderation, product search): JSON schema in each request form, regex, choice,
grammar, tools with every tool_choice, legacy functions, and a conversation that already holds a call and its
result. Bounds (maxLength, maxItems, repetition counts) keep most answers short on a small model; the ones that
are not bounded may run out of max_tokens and end "length", which promises nothing.

:func:`check` is independent of the server's code: a "stop" answer parses and validates with ``jsonschema``,
matches its regex with Python's ``re`` (``re.ASCII``, the documented dialect), is one of its labels, or matches
the regular expression its grammar describes; a "tool_calls" answer calls declared functions with arguments that
validate against their parameters.
"""
from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

CAR = {"type": "object", "properties": {"brand": {"type": "string"}, "model": {"type": "string"},
                                        "car_type": {"type": "string", "enum": ["sedan", "SUV", "Truck", "Coupe"]}},
       "required": ["brand", "model", "car_type"], "additionalProperties": False}
SHORT_CAR = {**CAR, "properties": {**CAR["properties"], "brand": {"type": "string", "maxLength": 16},
                                   "model": {"type": "string", "maxLength": 16}}}
MATH = {"type": "object", "properties": {
    "steps": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
        "explanation": {"type": "string", "maxLength": 40}, "output": {"type": "string", "maxLength": 16}},
        "required": ["explanation", "output"], "additionalProperties": False}},
    "final_answer": {"type": "string", "maxLength": 12}}, "required": ["steps", "final_answer"],
    "additionalProperties": False}
EVENT = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                          "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                                          "participants": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                                           "maxItems": 3}},
         "required": ["name", "date", "participants"], "additionalProperties": False}
PAPER = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                          "authors": {"type": "array", "items": {"type": "string", "maxLength": 16},
                                                      "minItems": 1, "maxItems": 2},
                                          "year": {"type": "integer", "minimum": 1900, "maximum": 2030}},
         "required": ["title", "authors", "year"], "additionalProperties": False}
MODERATION = {"type": "object", "properties": {
    "is_violating": {"type": "boolean"},
    "category": {"anyOf": [{"type": "string", "enum": ["violence", "sexual", "self_harm"]}, {"type": "null"}]},
    "explanation": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]}},
    "required": ["is_violating", "category", "explanation"], "additionalProperties": False}
PEOPLE = {"type": "object", "properties": {"people": {"type": "array", "maxItems": 3, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False}}}, "required": ["people"], "additionalProperties": False}
REVIEW = {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
                                           "score": {"type": "integer", "minimum": 1, "maximum": 5},
                                           "spam": {"type": "boolean"}},
          "required": ["sentiment", "score", "spam"], "additionalProperties": False}
ORDER = {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
    "type": "object", "properties": {"sku": {"type": "string", "pattern": r"^[A-Z]{3}-\d{3}$"},
                                     "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["sku", "qty"], "additionalProperties": False}},
    "zip": {"type": "string", "pattern": r"^\d{5}$"}}, "required": ["items", "zip"], "additionalProperties": False}
SCORE = {"type": "object", "properties": {"is_spam": {"type": "boolean"},
                                          "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
         "required": ["is_spam", "confidence"], "additionalProperties": False}
LABEL = {"type": "string", "enum": ["billing", "shipping", "returns"]}

REGEXES = [
    (r"\w{1,12}@\w{1,10}\.com", "Write an example email address for John Doe."),
    (r"\w+@\w+\.com\n", "Give the email address of the support team."),
    (r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)", "Give an example IPv4 address."),
    (r"\d{4}-\d{2}-\d{2}", "On which date did the first moon landing happen?"),
    (r"\(\d{3}\) \d{3}-\d{4}", "Write a phone number for a US business."),
    (r"([01]\d|2[0-3]):[0-5]\d", "At what time does a bakery usually open?"),
    (r"#[0-9a-fA-F]{6}", "What is the hex color code of pure red?"),
    (r"\d{4}", "In which year did the Berlin wall fall?"),
    (r"\d{5}(-\d{4})?", "Write a ZIP code in New York."),
    (r"(yes|no), because [a-z ]{1,30}\.", "Is the sky blue? Answer and give a reason."),
    (r"[A-Z][a-z]{2,10}\s[A-Z][a-z]{2,10}", "Name a famous scientist."),
    (r"\s?\d{1,3}(\.\d)?\s?%", "What share of the Earth is covered by water?"),
]
SQL = ('root ::= select_statement\nselect_statement ::= "SELECT " column " from " table " where " condition\n'
       'column ::= "col_1 " | "col_2 "\ntable ::= "table_1 " | "table_2 "\ncondition ::= column "= " number\n'
       'number ::= "1 " | "2 "')
SQL_LARK = ('start: "SELECT " COLUMN " FROM " TABLE (" WHERE " COLUMN " = " NUMBER)? ";"\n'
            'COLUMN: "name" | "age" | "city"\nTABLE: "people" | "orders"\nNUMBER: /[0-9]{1,3}/')
ARITHMETIC = 'start: NUM " " OP " " NUM " = " NUM\nNUM: /[0-9]{1,3}/\nOP: "+" | "-" | "*"'
CSV_ROW = 'root ::= field "," field "," field\nfield ::= [a-z] [a-z]? [a-z]? [a-z]? [a-z]? [a-z]?'
ANSWER = 'start: ("yes" | "no") ". " REASON "."\nREASON: /[A-Za-z ]{1,40}/'
GRAMMARS = {  # each grammar and the regular expression of the language it describes
    SQL: r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ",
    SQL_LARK: r"SELECT (name|age|city) FROM (people|orders)( WHERE (name|age|city) = [0-9]{1,3})?;",
    ARITHMETIC: r"[0-9]{1,3} [+*-] [0-9]{1,3} = [0-9]{1,3}",
    CSV_ROW: r"[a-z]{1,6},[a-z]{1,6},[a-z]{1,6}",
    ANSWER: r"(yes|no)\. [A-Za-z ]{1,40}\.",
}

WEATHER = {"name": "get_current_weather", "description": "Get the current weather in a given location",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "description": "The city to find the weather for, e.g. 'San Francisco'",
                        "maxLength": 20},
               "state": {"type": "string", "description": "The two-letter abbreviation for the state, e.g. 'CA'",
                         "pattern": r"^[A-Z]{2}$"},
               "unit": {"type": "string", "description": "The unit to fetch the temperature in",
                        "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "state", "unit"], "additionalProperties": False}}
FORECAST = {"name": "get_forecast", "description": "The weather forecast for the next days",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                           "required": ["city", "days"], "additionalProperties": False}}
SEARCH = {"name": "search_products", "description": "Search the product catalog",
          "parameters": {"type": "object", "properties": {
              "query": {"type": "string", "maxLength": 24},
              "category": {"type": "string", "enum": ["shoes", "jackets", "bags"]},
              "max_price": {"type": "number", "minimum": 0, "maximum": 1000}},
              "required": ["query", "category"], "additionalProperties": False}}
FUNCTIONS = {f["name"]: f for f in (WEATHER, FORECAST, SEARCH)}


def _tools(*functions: dict) -> list[dict]:
    return [{"type": "function", "function": f} for f in functions]


def _line(custom_id: str, model: str, content: str | list, max_tokens: int, **body: Any) -> dict[str, Any]:
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages, "max_tokens": max_tokens, **body}}


def _schema(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def lines(model: str) -> list[dict[str, Any]]:
    out = []
    add = out.append
    sampled = lambda i: {"temperature": 0.7, "seed": i}  # noqa: E731
    # -- JSON schema, every request form ------------------------------------------------------------------------
    car = "Generate a JSON with the brand, model and car_type of the most iconic car from the 90's"
    add(_line("car-original", model, car, 48, temperature=0, response_format=_schema("car", CAR)))
    add(_line("car-response-format", model, car, 48, **sampled(1), response_format=_schema("car", SHORT_CAR)))
    add(_line("car-structured-outputs", model, car, 48, **sampled(2), structured_outputs={"json": SHORT_CAR}))
    add(_line("car-guided-json", model, car, 48, temperature=0, guided_json=SHORT_CAR))
    add(_line("car-guided-json-text", model, car, 48, **sampled(3), guided_json=json.dumps(SHORT_CAR)))
    add(_line("math-tutor", model, [{"role": "system", "content": "You are a helpful math tutor. Guide the user "
                                                                  "through the solution step by step."},
                                    {"role": "user", "content": "how can I solve 8x + 7 = -23"}], 96,
              temperature=0, response_format=_schema("math_reasoning", MATH)))
    add(_line("math-tutor-sampled", model, "Solve 3x = 12 step by step.", 96, **sampled(4),
              response_format=_schema("math_reasoning", MATH)))
    add(_line("event", model, "Alice and Bob are going to a science fair on Friday, 2024-05-10.", 64, temperature=0,
              response_format=_schema("calendar_event", EVENT)))
    add(_line("event-sampled", model, "Dinner with Carla on 2025-01-03.", 64, **sampled(5),
              structured_outputs={"json": EVENT}))
    add(_line("paper", model, "Extract: 'Attention Is All You Need' by Vaswani and Shazeer, 2017.", 64,
              temperature=0, response_format=_schema("paper", PAPER)))
    add(_line("moderation", model, "Classify this message: 'I will hurt you'", 48, temperature=0,
              response_format=_schema("moderation", MODERATION)))
    add(_line("moderation-sampled", model, "Classify: 'Have a lovely day'", 48, **sampled(6),
              response_format=_schema("moderation", MODERATION)))
    add(_line("people", model, "Ann is 31 and Bo is 45. List the people.", 64, temperature=0,
              response_format=_schema("people", PEOPLE)))
    add(_line("review", model, "Review: 'Great blender, quiet and strong.'", 32, temperature=0,
              response_format=_schema("review", REVIEW)))
    add(_line("review-sampled", model, "Review: 'The zipper broke after a week.'", 32, **sampled(7),
              guided_json=REVIEW))
    add(_line("order", model, "Two of ABC-123 to 10001.", 48, temperature=0, response_format=_schema("order", ORDER)))
    add(_line("spam-score", model, "Is 'WIN A FREE PHONE NOW' spam?", 24, temperature=0,
              response_format=_schema("score", SCORE)))
    add(_line("label-enum", model, "Which team handles 'my parcel never came'?", 8, temperature=0,
              response_format=_schema("label", LABEL)))
    for i, note in enumerate(["a note about the weather", "the user's favourite colors", "a todo list"]):
        add(_line(f"json-object-{i}", model, f"Write {note} as a JSON object.", 48, **sampled(10 + i),
                  response_format={"type": "json_object"}))
    # -- regex ----------------------------------------------------------------------------------------------------
    for i, (pattern, prompt) in enumerate(REGEXES):
        form = {"structured_outputs": {"regex": pattern}} if i % 2 else {"guided_regex": pattern}
        add(_line(f"regex-{i}", model, prompt, 24, **(sampled(20 + i) if i % 3 else {"temperature": 0}), **form))
    # -- choice ---------------------------------------------------------------------------------------------------
    add(_line("choice-sentiment", model, "Classify this sentiment: vLLM is wonderful!", 8, temperature=0,
              guided_choice=["positive", "negative"]))
    add(_line("choice-sentiment-sampled", model, "Classify this sentiment: the update broke my phone", 8,
              **sampled(40), structured_outputs={"choice": ["Positive", "Negative"]}))
    add(_line("choice-spaces", model, "Will it rain tomorrow?", 8, **sampled(41),
              guided_choice=["yes", "no", "not sure"]))
    add(_line("choice-topic", model, "Topic of: 'the GPU ran out of memory'", 8, temperature=0,
              structured_outputs={"choice": ["hardware", "software", "billing", "other"]}))
    add(_line("choice-n", model, "Pick a color.", 8, **sampled(42), n=2, guided_choice=["red", "green", "blue"]))
    # -- grammar --------------------------------------------------------------------------------------------------
    sql = "Generate an SQL query to show the 'username' and 'email' from the 'users' table."
    add(_line("grammar-sql", model, sql, 32, temperature=0, guided_grammar=SQL))
    add(_line("grammar-sql-sampled", model, sql, 32, **sampled(50), structured_outputs={"grammar": SQL}))
    add(_line("grammar-sql-lark", model, "Query the names of people older than 30.", 32, temperature=0,
              structured_outputs={"grammar": SQL_LARK}))
    add(_line("grammar-sql-lark-sampled", model, "Query all orders.", 32, **sampled(51), guided_grammar=SQL_LARK))
    add(_line("grammar-arithmetic", model, "Write a sum of two numbers and its result.", 24, temperature=0,
              guided_grammar=ARITHMETIC))
    add(_line("grammar-csv", model, "Three fruits, comma separated, lower case.", 24, **sampled(52),
              guided_grammar=CSV_ROW))
    add(_line("grammar-answer", model, "Is water wet? Answer yes or no with a reason.", 24, temperature=0,
              structured_outputs={"grammar": ANSWER}))
    # -- tools ----------------------------------------------------------------------------------------------------
    dallas = "What's the weather like in Dallas, TX in fahrenheit?"
    weather = _tools(WEATHER)
    add(_line("tools-auto", model, dallas, 64, temperature=0, tools=weather))
    add(_line("tools-auto-chat", model, "Hi! How are you doing today?", 32, temperature=0, tools=weather,
              tool_choice="auto"))
    add(_line("tools-required", model, dallas, 64, temperature=0, tools=weather, tool_choice="required",
              parallel_tool_calls=False))
    add(_line("tools-required-sampled", model, "Is it cold in Boston, MA?", 64, **sampled(60), tools=weather,
              tool_choice="required"))
    add(_line("tools-named", model, "Weather in Austin, TX please, in celsius.", 64, **sampled(61), tools=weather,
              tool_choice={"type": "function", "function": {"name": "get_current_weather"}}))
    add(_line("tools-none", model, dallas, 24, temperature=0, tools=weather, tool_choice="none"))
    add(_line("tools-empty", model, "Say hello.", 16, temperature=0, tools=[], tool_choice="none"))
    add(_line("tools-two", model, "Forecast for Seattle for 3 days, and the weather in Miami, FL now.", 96,
              temperature=0, tools=_tools(WEATHER, FORECAST), tool_choice="required"))
    add(_line("tools-one-call", model, "Forecast for Paris for 2 days.", 64, **sampled(62),
              tools=_tools(WEATHER, FORECAST), tool_choice="required", parallel_tool_calls=False))
    add(_line("tools-products", model, [{"role": "system", "content": "You help customers find products."},
                                        {"role": "user", "content": "I need waterproof hiking shoes under 120 dollars"}],
              64, temperature=0, tools=_tools(SEARCH), tool_choice="required", parallel_tool_calls=False))
    add(_line("tools-products-auto", model, "Show me red leather bags.", 64, **sampled(63), tools=_tools(SEARCH)))
    add(_line("tools-stop-ignored", model, "Weather in Reno, NV in celsius?", 64, temperature=0, tools=weather,
              tool_choice="required", parallel_tool_calls=False, stop=["}"]))
    add(_line("functions-legacy", model, dallas, 64, temperature=0, functions=[WEATHER],
              function_call={"name": "get_current_weather"}))
    add(_line("functions-legacy-auto", model, "Weather in Denver, CO?", 64, **sampled(64), functions=[WEATHER]))
    history = [{"role": "user", "content": dallas},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_dallas", "type": "function",
                "function": {"name": "get_current_weather",
                             "arguments": '{"city": "Dallas", "state": "TX", "unit": "fahrenheit"}'}}]},
               {"role": "tool", "tool_call_id": "call_dallas", "content": '{"temperature": 95, "sky": "sunny"}'}]
    add(_line("tools-history", model, history, 48, temperature=0, tools=weather))
    add(_line("tools-history-required", model, history + [{"role": "user", "content": "And in Houston, TX?"}], 64,
              **sampled(65), tools=weather, tool_choice="required"))
    return out


def _constraint(body: dict[str, Any]) -> tuple[str, Any]:
    if "tools" in body or "functions" in body:
        return "tools", body
    fmt = body.get("response_format")
    if fmt is not None:
        return ("json_object", None) if fmt["type"] == "json_object" else ("json", fmt["json_schema"]["schema"])
    so = body.get("structured_outputs") or {}
    for key, kind in (("json", "json"), ("regex", "regex"), ("choice", "choice"), ("grammar", "grammar")):
        if key in so:
            return kind, so[key]
    for key, kind in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                      ("guided_grammar", "grammar")):
        if key in body:
            value = body[key]
            return kind, json.loads(value) if kind == "json" and isinstance(value, str) else value
    raise AssertionError(f"no constraint in {body}")


def check(line: dict[str, Any], response: dict[str, Any]) -> list[str]:
    """Assert every choice of a line's response keeps its constraint; returns the choices' finish reasons."""
    body = line["body"]
    kind, spec = _constraint(body)
    reasons = []
    for choice in response["choices"]:
        reason, message = choice["finish_reason"], choice["message"]
        reasons.append(reason)
        where = f"{line['custom_id']}: {reason} {message!r}"
        if reason == "length":
            continue
        if kind == "tools":
            _check_tools(body, reason, message, where)
            continue
        assert reason == "stop", where
        text = message["content"]
        if kind == "json":
            if spec.get("type") == "string" and "enum" in spec:
                assert json.loads(text) in spec["enum"], where
            else:
                jsonschema.validate(json.loads(text), spec)
        elif kind == "json_object":
            assert isinstance(json.loads(text), dict), where
        elif kind == "regex":
            assert re.fullmatch(spec, text, re.ASCII), where
        elif kind == "choice":
            assert text in spec, where
        else:
            assert re.fullmatch(GRAMMARS[spec], text, re.ASCII), where
    return reasons


def _check_tools(body: dict[str, Any], reason: str, message: dict[str, Any], where: str) -> None:
    legacy = "functions" in body
    declared = {f["name"]: f for f in body["functions"]} if legacy else \
        {t["function"]["name"]: t["function"] for t in body.get("tools", [])}
    choice = body.get("function_call" if legacy else "tool_choice", "auto" if declared else "none")
    if choice == "none" or not declared:
        assert reason == "stop" and not message.get("tool_calls") and not message.get("function_call"), where
        return
    calls = ([message["function_call"]] if reason == "function_call" else
             [c["function"] for c in message.get("tool_calls") or []])
    if choice != "auto":  # required or a named function: calls only
        assert reason == ("function_call" if legacy else "tool_calls"), where
    if reason == "stop":
        assert not calls and isinstance(message["content"], str), where
        return
    assert reason == ("function_call" if legacy else "tool_calls") and calls, where
    if body.get("parallel_tool_calls") is False or legacy:
        assert len(calls) == 1, where
    for call in calls:
        assert call["name"] in declared, where
        if isinstance(choice, dict):
            assert call["name"] == (choice.get("name") or choice["function"]["name"]), where
        jsonschema.validate(json.loads(call["arguments"]), declared[call["name"]]["parameters"])
