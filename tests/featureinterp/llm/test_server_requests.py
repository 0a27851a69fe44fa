"""featureinterp.llm.server_requests: the chat-completions request bodies the local server accepts.

Without a socket: a full body becomes the messages and ``GenerationParams`` it asks for (roles
normalised, text parts joined, ``max_completion_tokens`` before ``max_tokens``, each
``response_format``), an empty one takes the defaults, and every malformed field is refused with a
400 ``RequestError`` that names the field (``param``) and quotes the bad value.
"""

from __future__ import annotations

import pytest

from featureinterp.llm.backend import GenerationParams, system, user
from featureinterp.llm.server_requests import JSON_OBJECT_SCHEMA, RequestError, parse_request, response_schema

MESSAGES = [{"role": "system", "content": "You explain features."}, {"role": "user", "content": "Explain."}]
SCHEMA = {"type": "object", "properties": {"rules": {"type": "array"}}, "required": ["rules"]}


def test_a_full_request_becomes_messages_and_generation_params() -> None:
    body = {
        "model": "anything",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]},
            {"role": "assistant", "content": ""},
        ],
        "n": 3,
        "temperature": 0,
        "top_p": 0.5,
        "max_tokens": 9,
        "max_completion_tokens": 17,
        "seed": 11,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
        "stream": False,  # unsupported fields are refused only when they ask for something
        "stop": None,
        "tools": [],
        "user": "ignored",
    }
    messages, params = parse_request(body, max_n=4, default_max_tokens=100)
    assert messages == [system("be brief"), user("hello"), {"role": "assistant", "content": ""}]
    assert params == GenerationParams(
        n=3, temperature=0.0, top_p=0.5, max_tokens=17, json_schema=SCHEMA, seed=11
    )
    assert isinstance(params.temperature, float)


def test_an_empty_request_takes_the_defaults() -> None:
    messages, params = parse_request({"messages": MESSAGES}, max_n=1, default_max_tokens=123)
    assert messages == MESSAGES
    assert params == GenerationParams(
        n=1, temperature=1.0, top_p=1.0, max_tokens=123, json_schema=None, seed=None
    )
    nulls = {"messages": MESSAGES, "n": None, "temperature": None, "max_tokens": None, "seed": None}
    assert parse_request(nulls, 1, 123)[1] == params  # null means "not set"
    assert parse_request({"messages": MESSAGES, "max_tokens": 5}, 1, 123)[1].max_tokens == 5


def test_response_formats() -> None:
    assert response_schema(None) is None and response_schema({"type": "text"}) is None
    schema = response_schema({"type": "json_object"})
    assert schema == JSON_OBJECT_SCHEMA == {"type": "object"}
    schema["required"] = ["x"]  # a copy: the constant stays as it is
    assert JSON_OBJECT_SCHEMA == {"type": "object"}
    assert response_schema({"type": "json_schema", "json_schema": {"schema": SCHEMA}}) is SCHEMA


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ([MESSAGES], None, "the request body must be a JSON object, not list"),
        ({"messages": MESSAGES, "stream": True}, "stream", "'stream' is not supported by this server"),
        ({"messages": MESSAGES, "logprobs": True}, "logprobs", "'logprobs' is not supported"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools", "'tools' is not supported"),
        ({"messages": MESSAGES, "stop": ["\n"]}, "stop", "'stop' is not supported"),
        ({}, "messages", "'messages' must be a non-empty list"),
        ({"messages": []}, "messages", "'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "messages[0] must be an object"),
        (
            {"messages": [MESSAGES[0], {"role": "tool", "content": "x"}]},
            "messages[1]",
            "messages[1].role 'tool' is not one of system, developer, user, assistant",
        ),
        ({"messages": [{"content": "x"}]}, "messages[0]", "messages[0].role None is not one of"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "messages[0]",
            "messages[0].content must be a string",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
            "messages[0]",
            "messages[0].content has non-text parts",
        ),
        ({"messages": MESSAGES, "n": 5}, "n", "n is 5; this server returns at most 4"),
        ({"messages": MESSAGES, "n": "3"}, "n", "'n' must be an integer, got '3'"),
        ({"messages": MESSAGES, "n": True}, "n", "'n' must be an integer, got True"),
        ({"messages": MESSAGES, "seed": 1.5}, "seed", "'seed' must be an integer, got 1.5"),
        ({"messages": MESSAGES, "max_tokens": 9.0}, "max_tokens", "'max_tokens' must be an integer, got 9.0"),
        (
            {"messages": MESSAGES, "temperature": "hot"},
            "temperature",
            "'temperature' must be a number, got 'hot'",
        ),
        ({"messages": MESSAGES, "top_p": False}, "top_p", "'top_p' must be a number, got False"),
        (
            {"messages": MESSAGES, "response_format": {"type": "grammar"}},
            "response_format",
            "response_format type 'grammar' is not one of text, json_object, json_schema",
        ),
        (
            {"messages": MESSAGES, "response_format": "json"},
            "response_format",
            "response_format type None is not one of",
        ),
        (
            {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "response_format json_schema needs a 'json_schema': {'schema': {...}} object",
        ),
    ],
)
def test_malformed_fields_get_a_400_naming_the_field_and_value(
    body: object, param: str | None, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(body, max_n=4, default_max_tokens=100)
    err = caught.value
    assert (err.status, err.kind, err.param) == (400, "invalid_request_error", param)
    assert str(err).startswith(message), str(err)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 0, "n must be at least 1, got 0"),
        ("temperature", -0.5, "temperature must be >= 0, got -0.5"),
        ("top_p", 0, "top_p must be in (0, 1], got 0.0"),
        ("max_completion_tokens", 0, "max_tokens must be at least 1, got 0"),
    ],
)
def test_out_of_range_values_get_the_generation_params_message(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request({"messages": MESSAGES, field: value}, max_n=4, default_max_tokens=100)
    assert caught.value.status == 400 and str(caught.value) == message
