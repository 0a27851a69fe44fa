"""featureinterp.llm.api_replies: reading the JSON replies of OpenAI-compatible servers.

Scripted reply bodies (as servers send them, schema bent included) are read into completions,
reasoning and first-token logprobs; every unusable body raises ``BadResponse`` with a message that
says what was wrong (and quotes the value), and the error, header and usage helpers read what
servers put there.
"""

from __future__ import annotations

import email.utils
import json
import time

import httpx
import openai
import pytest

from featureinterp.llm.api_replies import (
    BadResponse,
    choices,
    completion_of,
    completions,
    int_or_zero,
    json_body,
    reasoning,
    retry_after_s,
    short_reason,
    top_logprobs,
)
from featureinterp.llm.backend import Completion


def message(content: str | None, **extra: object) -> dict:
    return {"role": "assistant", "content": content, **extra}


def test_json_body_reads_an_object_and_quotes_what_is_not_json() -> None:
    assert json_body('{"id": "x", "choices": []}') == {"id": "x", "choices": []}
    with pytest.raises(BadResponse, match=r"body is not JSON \('<html>upstream hiccup</html>'\)"):
        json_body("<html>upstream hiccup</html>")
    with pytest.raises(BadResponse, match=r"body is not JSON \('" + "x" * 60 + r"'\)"):  # quoted, cut at 60
        json_body("x" * 500)
    with pytest.raises(BadResponse, match="body is a JSON list, not an object"):
        json_body("[1, 2]")
    with pytest.raises(BadResponse, match="body is a JSON str, not an object"):
        json_body('"ok"')


def test_choices_come_in_index_order_and_null_content_is_allowed() -> None:
    body = {
        "choices": [
            {"index": 2, "message": message("c")},
            {"index": 0, "message": message(None)},  # e.g. a reply that is all tool call / reasoning
            {"index": 1, "message": message("b")},
        ]
    }
    assert [c["message"]["content"] for c in choices(body)] == [None, "b", "c"]
    unindexed = {"choices": [{"message": message("a")}, {"index": "1", "message": message("b")}]}
    assert [c["message"]["content"] for c in choices(unindexed)] == ["a", "b"]  # no usable index: 0, stable


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "no choices$"),
        ({"choices": []}, "no choices$"),
        ({"choices": "none"}, "no choices$"),
        ({"error": {"message": "model overloaded", "code": 503}}, r"no choices \(error: model overloaded\)"),
        ({"error": "quota exceeded"}, r"no choices \(error: quota exceeded\)"),
        ({"choices": [{"index": 0}]}, "a choice has no message content"),
        ({"choices": [{"message": {"content": 3}}]}, "a choice has no message content"),
        ({"choices": ["text"]}, "a choice has no message content"),
    ],
)
def test_unusable_choices_raise_bad_response(body: dict, error: str) -> None:
    with pytest.raises(BadResponse, match=error):
        choices(body)


def test_completions_one_entry_per_choice_with_id_and_reasoning() -> None:
    body = {
        "id": "chatcmpl-7",
        "choices": [
            {"index": 1, "message": message(None), "finish_reason": "length"},
            {
                "index": 0,
                "message": message('{"rules": []}', reasoning_content="think"),
                "finish_reason": "stop",
            },
        ],
    }
    assert completions(body, "req-header-id") == [
        {"text": '{"rules": []}', "finish_reason": "stop", "request_id": "chatcmpl-7", "reasoning": "think"},
        {"text": "", "finish_reason": "length", "request_id": "chatcmpl-7", "reasoning": ""},
    ]
    no_id = {"id": 42, "choices": [{"message": message("a")}]}  # no string id: the header's request id
    assert completions(no_id, "req-header-id")[0]["request_id"] == "req-header-id"
    assert completions({"choices": [{"message": message("a")}]}, None)[0]["request_id"] is None


def test_reasoning_is_read_from_either_field_and_never_the_answer() -> None:
    assert reasoning(message("answer", reasoning_content="vllm", reasoning="openrouter")) == "vllm"
    assert reasoning(message("answer", reasoning_content="  \n", reasoning="openrouter")) == "openrouter"
    assert reasoning(message("answer", reasoning={"effort": "high"})) == ""  # not text
    assert reasoning(message("answer")) == ""


def test_completion_of_a_cached_entry_survives_json() -> None:
    entry = completions({"id": "r1", "choices": [{"message": message("hi"), "finish_reason": "stop"}]}, None)[
        0
    ]
    entry = json.loads(json.dumps(entry | {"mode": {"n": "separate"}}))  # as the disk cache stores it
    assert completion_of(entry, cached=True) == Completion(
        "hi", "stop", "r1", cached=True, reasoning="", mode={"n": "separate"}
    )
    old = {"text": "t", "finish_reason": None, "request_id": None}  # written before reasoning and mode
    assert completion_of(old, cached=False) == Completion("t")


def test_top_logprobs_include_the_sampled_token_and_keep_the_best_of_duplicates() -> None:
    first = {
        "token": " 3",
        "logprob": -0.5,
        "top_logprobs": [
            {"token": "4", "logprob": -1.25},
            {"token": " 3", "logprob": -0.75},  # the sampled token again, a worse value: the best is kept
            {"token": "x", "logprob": float("nan")},  # unreadable: dropped
            {"token": "7", "logprob": "-4"},  # numeric string: read as a number
        ],
    }
    body = {"choices": [{"message": message(" 3"), "logprobs": {"content": [first, {"token": "\n"}]}}]}
    assert top_logprobs(body, None) == [[" 3", -0.5], ["4", -1.25], ["7", -4.0]]
    sampled_only = {
        "choices": [{"message": message("a"), "logprobs": {"content": [{"token": "a", "logprob": 0}]}}]
    }
    assert top_logprobs(sampled_only, None) == [["a", 0.0]]


@pytest.mark.parametrize(
    "logprobs",
    [None, {"content": []}, {"content": [{"token": "a"}]}, {"content": [{"token": "a", "logprob": "low"}]}],
)
def test_a_reply_without_first_token_logprobs_is_a_bad_response(logprobs: dict | None) -> None:
    body = {"choices": [{"message": message("a"), "logprobs": logprobs}]}
    with pytest.raises(
        BadResponse, match=r"no logprobs for the first token \(does the server support logprobs"
    ):
        top_logprobs(body, None)


def _status_error(status: int, text: str, body: object) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    return openai.APIStatusError(
        "error", response=httpx.Response(status, text=text, request=request), body=body
    )


def test_short_reason_is_the_servers_message_on_one_line() -> None:
    nested = {"error": {"message": "Rate limit\n  exceeded:\tretry later", "type": "rate_limit"}}
    assert short_reason(_status_error(429, "", nested)) == "Rate limit exceeded: retry later"
    assert short_reason(_status_error(400, "", {"error": "bad model"})) == "bad model"
    assert short_reason(_status_error(400, "", {"message": "flat"})) == "flat"  # no "error" wrapper
    assert short_reason(_status_error(503, "upstream  down\n now", None)) == "upstream down now"
    assert short_reason(_status_error(502, "", None)) == "Bad Gateway"  # empty body: the status phrase
    assert short_reason(_status_error(500, "", {"error": {"message": "y" * 500}})) == "y" * 200


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("2") == 2.0 and retry_after_s("0.5") == 0.5
    assert retry_after_s("-3") == 0.0  # never a negative wait
    assert retry_after_s(None) is None and retry_after_s("") is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    later = retry_after_s(email.utils.formatdate(time.time() + 120, usegmt=True))
    assert later is not None and 115 <= later <= 121


@pytest.mark.parametrize(("value", "count"), [(7, 7), (0, 0), (None, 0), ("12", 0), (3.0, 0), (True, 0)])
def test_int_or_zero_counts_only_integers(value: object, count: int) -> None:
    assert int_or_zero(value) == count
