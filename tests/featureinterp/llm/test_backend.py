"""featureinterp.llm.backend: the chat message helpers, GenerationParams validation, Usage accounting
(``add``/``snapshot``/``since``, ``tally_usage`` scopes across threads) and ``request_modes``."""

import contextvars
import threading

import pytest

from featureinterp.llm.backend import (
    GenerationParams,
    Usage,
    assistant,
    request_modes,
    system,
    tally_usage,
    user,
)


def test_message_helpers_build_openai_chat_messages():
    assert [system("s"), user("u"), assistant("a")] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be at least 1, got 0"),
        ({"temperature": -0.1}, "temperature must be >= 0, got -0.1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
    ],
)
def test_generation_params_reject_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**kwargs)


def test_usage_since_a_snapshot():
    usage = Usage()
    usage.add(requests=1, prompt_tokens=100)
    before = usage.snapshot()
    usage.add(requests=2, completion_tokens=30, cost_usd=0.25)
    delta = usage.since(before)
    assert (delta["requests"], delta["prompt_tokens"], delta["completion_tokens"]) == (2, 0, 30)
    assert delta["cost_usd"] == 0.25 and "_lock" not in delta
    assert usage.requests == 3 and usage.prompt_tokens == 100


def test_tally_usage_counts_only_calls_inside_its_block():
    backend_usage = Usage()
    backend_usage.add(requests=5)
    with tally_usage() as tally:
        backend_usage.add(requests=1, prompt_tokens=10)
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(backend_usage.add,), kwargs={"requests": 2}
        )
        thread.start()
        thread.join()
    backend_usage.add(requests=100)
    assert tally.requests == 3 and tally.prompt_tokens == 10
    assert backend_usage.requests == 108, "the backend's own usage counts everyone's"


def test_request_modes_counts_completions_per_mode():
    fallback = {"response_format": "json_object", "n": "separate", "seed": None}
    counts = request_modes([{"mode": fallback}, {"mode": fallback}, {"mode": None}, {}])
    assert counts == {"response_format=json_object, n=separate": 2, "local": 2}
    assert request_modes([]) == {}
    # a request that failed has no mode: it is "no reply", not a local completion
    failed = {"text": "", "mode": None, "error": "timed out after 120 s"}
    assert request_modes([failed, {"mode": fallback}]) == {"no reply": 1, next(iter(counts)): 1}
