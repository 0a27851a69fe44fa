"""The OpenAI-protocol server in front of a ChatBackend, driven by the project's own OpenAIChatBackend.

End to end: a tiny random-weight Llama over the real SmolLM2 tokenizer (real chat template, real
xgrammar grammar), served on loopback, asked through ``OpenAIChatBackend``: the path the paper
presets' API explainer takes in a stand-in run. Protocol details (parameter translation, errors)
use a recording fake backend, so they cost no generation.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np
import pytest

from featureinterp.explanations.rules import MAX_RULE_CHARS, explanation_schema, parse_structured
from featureinterp.llm.api import OpenAIChatBackend
from featureinterp.llm.backend import (
    BackendError,
    ChatBackend,
    Completion,
    GenerationParams,
    Message,
    Usage,
    system,
    user,
)
from featureinterp.llm.local import LocalChatBackend
from featureinterp.llm.server import JSON_OBJECT_SCHEMA, OpenAIServer, serve, start

KEY = "sk-local-SECRET-4711"
MODEL = "paper/explainer"
MESSAGES = [system("You explain features."), user("Explain the feature.")]


class RecordingBackend(ChatBackend):
    """Answers ``reply i`` n times and records what it was asked; ``fail`` makes it raise."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.name = "recording"
        self.usage = Usage()
        self.calls: list[tuple[list[Message], GenerationParams]] = []
        self.fail = fail

    def generate(self, messages: Sequence[Message], params: GenerationParams) -> list[Completion]:
        self.calls.append((list(messages), params))
        if self.fail is not None:
            raise self.fail
        self.usage.add(requests=1, prompt_tokens=5, completion_tokens=2 * params.n)
        return [Completion(f"reply {i}", "stop" if i else None, "local-1") for i in range(params.n)]

    def next_token_logprobs(self, messages, reply_prefix, candidates) -> np.ndarray:
        raise NotImplementedError


def post(url: str, body: bytes | dict, key: str | None = None) -> tuple[int, dict]:
    """A raw request (status, JSON body), without the client's retries or parsing."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def client(server: OpenAIServer, tmp_path, **kwargs) -> OpenAIChatBackend:
    kwargs.setdefault("cache_dir", tmp_path / "api-cache")
    kwargs.setdefault("timeout_s", 30.0)
    return OpenAIChatBackend(model=MODEL, base_url=server.base_url, sleep=lambda s: None, **kwargs)


@pytest.fixture(scope="module")
def tiny(embedded_model) -> LocalChatBackend:
    from tests.helpers import tiny_llama_for

    tok = embedded_model[1]
    return LocalChatBackend(tiny_llama_for(tok, seed=1), tok, name="tiny")


@pytest.fixture(scope="module")
def served(tiny):
    with serve(tiny, model_name=MODEL) as server:
        yield server


def test_json_schema_request_returns_n_parseable_explanations(served, tmp_path):
    api = client(served, tmp_path)
    # Every grammar step writes at least one character, so this many tokens always closes the JSON.
    max_tokens = 2 * MAX_RULE_CHARS + 120
    params = GenerationParams(
        n=3, temperature=1.0, max_tokens=max_tokens, json_schema=explanation_schema(2), seed=7
    )
    before = served.requests

    outs = api.generate(MESSAGES, params)

    assert len(outs) == 3
    assert [o.finish_reason for o in outs] == ["stop"] * 3, [o.text for o in outs]
    for o in outs:
        assert 1 <= len(parse_structured(o.text, rule_cap=2).rules) <= 2
        assert o.request_id.startswith("chatcmpl-") and not o.cached
    assert served.requests == before + 1

    again = api.generate(MESSAGES, params)
    assert all(o.cached for o in again) and [o.text for o in again] == [o.text for o in outs]
    assert served.requests == before + 1, "the client's disk cache answered, not the server"


def test_seed_makes_replies_reproducible_and_matches_the_backend(served, tiny, tmp_path):
    params = GenerationParams(n=2, temperature=1.0, top_p=0.9, max_tokens=12, seed=3)
    first = client(served, tmp_path / "a").generate(MESSAGES, params)
    second = client(served, tmp_path / "b").generate(MESSAGES, params)
    other = client(served, tmp_path / "c").generate(MESSAGES, GenerationParams(**{**vars(params), "seed": 4}))

    assert not any(o.cached for o in first + second)
    assert [o.text for o in first] == [o.text for o in second]
    assert [o.text for o in other] != [o.text for o in first]
    # Every parameter arrived intact: the same call made directly gives the same samples.
    assert [o.text for o in first] == [c.text for c in tiny.generate(MESSAGES, params)]
    assert all(o.finish_reason in ("stop", "length") for o in first)


def test_usage_numbers_are_the_backends_and_add_up(served, tiny, tmp_path):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "n": 2}
    before = tiny.usage.snapshot()
    status, answer = post(f"{served.base_url}/chat/completions", body)
    local = tiny.usage.since(before)

    assert status == 200
    assert answer["object"] == "chat.completion" and answer["model"] == MODEL
    assert answer["id"].startswith("chatcmpl-") and isinstance(answer["created"], int)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" for c in answer["choices"])
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len(tiny.prompt_ids(MESSAGES)) == local["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] == local["completion_tokens"] <= 2 * 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    api = client(served, tmp_path)
    before = tiny.usage.snapshot()
    api.generate(MESSAGES, GenerationParams(max_tokens=8, seed=1))
    local = tiny.usage.since(before)
    assert api.usage.requests == 1
    assert api.usage.prompt_tokens == local["prompt_tokens"] > 0
    assert api.usage.completion_tokens == local["completion_tokens"] > 0


def test_api_key_is_required_and_never_logged(tiny, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("featureinterp", "openai", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    wrong = "sk-wrong-OTHER-0815"
    with serve(tiny, model_name=MODEL, api_key=KEY) as server:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
        url = f"{server.base_url}/chat/completions"
        refused = [post(url, body), post(url, body, key=wrong), get(f"{server.base_url}/models")]

        with pytest.raises(BackendError, match="HTTP 401.*not retried"):
            client(server, tmp_path / "nokey").generate(MESSAGES, GenerationParams(max_tokens=4))
        outs = client(server, tmp_path / "key", api_key=KEY).generate(
            MESSAGES, GenerationParams(max_tokens=4)
        )
        listed = get(f"{server.base_url}/models", key=KEY)
        assert KEY not in repr(server)

    for status, answer in refused:
        assert status == 401 and answer["error"]["type"] == "authentication_error"
        assert KEY not in json.dumps(answer) and wrong not in json.dumps(answer)
    assert len(outs) == 1 and outs[0].finish_reason in ("stop", "length")
    assert listed[0] == 200 and listed[1]["data"][0]["id"] == MODEL
    assert server.requests == 1 and server.errors == 4
    server_lines = [r for r in caplog.records if r.name == "featureinterp.llm.server"]
    assert any("401" in r.getMessage() for r in server_lines), "refusals are logged"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert KEY not in logged and "SECRET" not in logged and wrong not in logged


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        ({"model": MODEL}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 3}]}, "content"),
        ({"messages": MESSAGES, "n": 0}, "n must be at least 1"),
        ({"messages": MESSAGES, "n": 1000}, "at most"),
        ({"messages": MESSAGES, "n": "3"}, "integer"),
        ({"messages": MESSAGES, "temperature": "hot"}, "number"),
        ({"messages": MESSAGES, "top_p": 0}, "top_p"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "seed": 1.5}, "seed"),
        ({"messages": MESSAGES, "response_format": {"type": "json_schema"}}, "schema"),
        ({"messages": MESSAGES, "response_format": {"type": "grammar"}}, "response_format"),
        ({"messages": MESSAGES, "stream": True}, "stream"),
        ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 5}, "logprobs"),
    ],
)
def test_bad_requests_get_a_400_json_error(body, fragment):
    backend = RecordingBackend()
    with serve(backend) as server:
        status, answer = post(f"{server.base_url}/chat/completions", body)
        assert server.errors == 1 and server.requests == 0
    assert status == 400, answer
    assert fragment in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"
    assert backend.calls == [], "the backend is never called with a bad request"


def test_backend_failure_is_a_500_and_the_client_retries(tmp_path):
    backend = RecordingBackend(fail=BackendError("out of memory"))
    with serve(backend) as server:
        status, answer = post(f"{server.base_url}/chat/completions", {"messages": MESSAGES})
        with pytest.raises(BackendError, match=r"after 2 attempts.*HTTP 500.*out of memory"):
            client(server, tmp_path, max_attempts=2).generate(MESSAGES, GenerationParams())
        # The server still answers after failures.
        backend.fail = None
        assert client(server, tmp_path).generate(MESSAGES, GenerationParams())[0].text == "reply 0"
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert "out of memory" in answer["error"]["message"]
    assert len(backend.calls) == 4 and server.errors == 3 and server.requests == 1


def test_parameters_are_translated(tmp_path):
    backend = RecordingBackend()
    schema = explanation_schema(2)
    with serve(backend, model_name=MODEL) as server:
        params = GenerationParams(n=3, temperature=0.3, top_p=0.9, max_tokens=50, json_schema=schema, seed=7)
        outs = client(server, tmp_path).generate(MESSAGES, params)
        client(server, tmp_path, json_schema_mode="json_object").generate(MESSAGES, params)
        client(server, tmp_path, json_schema_mode="none").generate(MESSAGES, params)
        url = f"{server.base_url}/chat/completions"
        raw = {
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}],
                },
            ],
            "max_tokens": 9,
            "max_completion_tokens": 17,
            "response_format": {"type": "text"},
        }
        status, answer = post(url, raw)
        not_found = post(f"{server.base_url}/completions", {"messages": MESSAGES})
        models = get(f"{server.base_url}/models")

    assert [(o.text, o.finish_reason) for o in outs] == [
        ("reply 0", "stop"),
        ("reply 1", "stop"),
        ("reply 2", "stop"),
    ]
    (m1, p1), (_, p2), (_, p3), (m4, p4) = backend.calls
    assert m1 == MESSAGES and p1 == params, "json_schema mode: everything arrives as sent"
    assert p2.json_schema == JSON_OBJECT_SCHEMA and p3.json_schema is None
    assert m4 == [system("be brief"), user("hello")]
    assert p4 == GenerationParams(max_tokens=17), "max_completion_tokens wins; defaults elsewhere"
    assert status == 200 and answer["model"] == MODEL and answer["usage"]["total_tokens"] == 7
    assert not_found[0] == 404 and "no route" in not_found[1]["error"]["message"]
    assert models == (
        200,
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "featureinterp"}],
        },
    )


def test_start_stop_with_a_kept_alive_connection(tmp_path):
    server = start(RecordingBackend(), model_name=MODEL)
    base_url = server.base_url
    api = client(server, tmp_path, max_attempts=2)
    assert api.generate(MESSAGES, GenerationParams())[0].text == "reply 0"  # the client keeps its connection
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 2.0, "an idle kept-alive connection does not block stop()"
    with pytest.raises(BackendError, match="APIConnectionError"):
        api.generate([user("after stop")], GenerationParams())  # the pooled connection was closed too
    server.stop()  # idempotent
    assert server.requests == 1
    with pytest.raises(RuntimeError, match="not running"):
        server.base_url  # noqa: B018
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with OpenAIServer(RecordingBackend()) as again:  # the class is a context manager as well
        assert post(f"{again.base_url}/chat/completions", {"messages": MESSAGES})[0] == 200
