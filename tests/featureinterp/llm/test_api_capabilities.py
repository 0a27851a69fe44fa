"""featureinterp.llm.api_capabilities: which parameter a server rejection makes us give up
(``fallback``), how it is logged (``describe``), and the per-(base URL, model) memory of what
worked (``recall``/``learn``), which only ever narrows. The same fallbacks against a real HTTP
server are in test_api_llm.py."""

from dataclasses import replace

import pytest

import featureinterp.llm.api_capabilities as api_capabilities
from featureinterp.llm.api_capabilities import (
    JSON_SCHEMA_MODES,
    Capabilities,
    describe,
    fallback,
    learn,
    recall,
)
from featureinterp.llm.backend import GenerationParams

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
ALL = GenerationParams(n=2, seed=1, json_schema=SCHEMA)


@pytest.fixture(autouse=True)
def _fresh_capabilities(monkeypatch):
    """Nothing learned before each test (capabilities are remembered per process)."""
    monkeypatch.setattr(api_capabilities, "_LEARNED", {})


def test_only_400_and_422_count_as_a_parameter_rejection():
    assert fallback(Capabilities(), ALL, 422, "Extra inputs are not permitted: seed")[0] == "seed"
    for status in (401, 403, 404, 500):
        assert fallback(Capabilities(), ALL, status, "response_format is not supported") is None


def test_fallback_gives_up_the_parameter_the_rejection_names():
    name, caps = fallback(Capabilities(), ALL, 400, "response_format json_schema is not supported")
    assert (name, caps) == ("response_format", Capabilities(response_format="json_object"))
    name, caps = fallback(caps, ALL, 400, "response_format json_object is not supported")
    assert (name, caps.response_format) == ("response_format", "none")
    assert fallback(Capabilities(), ALL, 400, "n must be 1 when using this endpoint") == (
        "n",
        Capabilities(n=False),
    )
    # a rejection saying "unsupported" without naming a parameter: the first we can give up
    assert fallback(Capabilities(), GenerationParams(seed=3), 400, "unsupported parameter")[0] == "seed"


def test_fallback_returns_none_when_nothing_named_can_be_left_out():
    assert fallback(Capabilities(), ALL, 400, "This model's maximum context length is 8192 tokens") is None
    exhausted = Capabilities(response_format="none", n=False, seed=False)
    assert fallback(exhausted, ALL, 400, "response_format is not supported") is None
    # parameters the request does not use are never "given up"
    assert fallback(Capabilities(), GenerationParams(), 400, "seed is not supported") is None


def test_describe_names_what_the_next_request_does_instead():
    assert (
        describe(Capabilities(response_format="json_object"), "response_format")
        == "response_format json_object"
    )
    assert describe(Capabilities(), "n") == "n separate requests"
    assert describe(Capabilities(), "seed") == "no seed"


def test_recall_starts_at_the_configured_rung_or_below_what_was_learned():
    assert recall("http://a/v1", "m", "json_schema") == Capabilities()
    assert recall("http://a/v1", "m", "none").response_format == "none"
    learn("http://a/v1", "m", Capabilities(response_format="json_object", seed=False))
    assert recall("http://a/v1", "m", "json_schema") == Capabilities("json_object", True, False)
    assert recall("http://a/v1", "other-model", "json_schema") == Capabilities(), "per (URL, model)"


def test_learn_only_narrows():
    learn("http://b/v1", "m", Capabilities(response_format="none", n=False))
    learn("http://b/v1", "m", replace(Capabilities(), seed=False))  # a later, wider success
    assert recall("http://b/v1", "m", JSON_SCHEMA_MODES[0]) == Capabilities("none", False, False)
