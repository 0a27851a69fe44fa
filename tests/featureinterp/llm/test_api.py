"""OpenAIChatBackend against a real local HTTP server that misbehaves on script.

The server speaks just enough of ``POST /v1/chat/completions``: each request pops the next behaviour
from a queue (429 with Retry-After, 5xx, a hang past the client timeout, a non-JSON 200, a 200
without choices, an error status) and otherwise answers with completions that echo the request's
last user message, so a test can tell which request got which answer.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from featureinterp.errors import ConfigError
from featureinterp.llm.api import OpenAIChatBackend
from featureinterp.llm.backend import BackendError, GenerationParams, assistant, request_modes, system, user

KEY = "sk-test-SECRET-123"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


class FakeServer:
    """Scripted behaviour and a record of every request (headers, JSON body)."""

    def __init__(self) -> None:
        self.script: collections.deque[str] = collections.deque()
        self.default = "ok"
        self.delay_s = 0.0
        self.hang_s = 1.0
        self.usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        self.top_logprobs: list[tuple[str, float]] = []
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.base_url = ""
        self.rejects: dict[str, tuple[int, str]] = {}
        """Parameters answered with (status, message), as servers without them answer: keys
        ``json_schema``, ``json_object``, ``n`` (n > 1), ``seed``."""
        self.max_choices: int | None = None
        """Choices per answer at most (a server that ignores ``n``: 1)."""
        self.reasoning: str | None = None
        """Sent as each choice's ``reasoning_content`` (vLLM's reasoning parser)."""

    def rejection(self, body: dict) -> tuple[int, str] | None:
        sent = {
            "json_schema": body.get("response_format", {}).get("type") == "json_schema",
            "json_object": body.get("response_format", {}).get("type") == "json_object",
            "n": body.get("n", 1) > 1,
            "seed": "seed" in body,
        }
        return next((self.rejects[k] for k in self.rejects if sent[k]), None)

    def answer(self, body: dict, number: int) -> dict:
        last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        logprobs = None
        if body.get("logprobs"):
            top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in self.top_logprobs]
            logprobs = {"content": [{**top[0], "top_logprobs": top}]}
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": f"echo[{i}]: {last_user}",
                        **({"reasoning_content": self.reasoning} if self.reasoning else {}),
                    },
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
                for i in range(min(body.get("n", 1), self.max_choices or body.get("n", 1)))
            ],
            "usage": self.usage,
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with fake.lock:
            fake.requests.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            )
            number = len(fake.requests)
            behaviour = fake.script.popleft() if fake.script else fake.default
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            self.behave(fake, behaviour, body, number)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)
        finally:
            with fake.lock:
                fake.in_flight -= 1

    def behave(self, fake: FakeServer, behaviour: str, body: dict, number: int) -> None:
        rejection = fake.rejection(body)
        if self.path != "/v1/chat/completions":
            self.send(404, b'{"error": {"message": "no such route"}}')
        elif rejection is not None:
            self.send(rejection[0], json.dumps({"error": {"message": rejection[1]}}).encode())
        elif behaviour == "429":
            self.send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "2"})
        elif behaviour.isdigit():
            message = json.dumps({"error": {"message": f"scripted {behaviour}"}}).encode()
            self.send(int(behaviour), message)
        elif behaviour == "hang":
            time.sleep(fake.hang_s)
            self.send(200, json.dumps(fake.answer(body, number)).encode())
        elif behaviour == "garbage":
            self.send(200, b"<html>upstream hiccup</html>")
        elif behaviour == "empty":
            self.send(200, b'{"choices": []}')
        elif behaviour == "no_logprobs":
            self.send(200, json.dumps({**fake.answer({**body, "logprobs": False}, number)}).encode())
        else:
            time.sleep(fake.delay_s)
            self.send(200, json.dumps(fake.answer(body, number)).encode(), {"x-request-id": f"req-{number}"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def server():
    fake = FakeServer()
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def make(server: FakeServer, sleeps: list[float] | None = None, **kwargs) -> OpenAIChatBackend:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("timeout_s", 0.5)
    kwargs.setdefault("jitter_seed", 0)
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return OpenAIChatBackend(model="test/model", base_url=server.base_url, sleep=sleep, **kwargs)


HELLO = [system("be brief"), user("hello")]


def test_retries_through_every_failure_kind_then_answers(server):
    server.script.extend(["429", "500", "hang", "garbage", "empty"])
    sleeps: list[float] = []
    backend = make(server, sleeps, backoff_initial_s=1.0, backoff_max_s=30.0)

    out = backend.generate(HELLO, GenerationParams(n=2, temperature=0.7, max_tokens=20))

    assert [c.text for c in out] == ["echo[0]: hello", "echo[1]: hello"]
    assert out[0].request_id == "chatcmpl-6" and out[0].finish_reason == "stop" and not out[0].cached
    assert len(server.requests) == 6
    assert all(r["body"] == server.requests[0]["body"] for r in server.requests), "retries resend the request"
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert backend.usage.retries == 5 and backend.usage.requests == 1
    # Retry-After: 2 is honoured exactly; the other delays grow as 1 * 2**k with ±20% jitter.
    assert sleeps[0] == 2.0
    assert len(sleeps) == 5
    for k, delay in enumerate(sleeps[1:], start=1):
        assert 0.8 * 2**k <= delay <= 1.2 * 2**k, (k, delay)


def test_backoff_and_retry_after_are_capped(server):
    server.script.extend(["429", "500", "500"])
    sleeps: list[float] = []
    backend = make(server, sleeps, backoff_initial_s=1.0, backoff_max_s=1.5)
    assert backend.generate(HELLO, GenerationParams())[0].text == "echo[0]: hello"
    assert sleeps[0] == 1.5  # Retry-After 2 capped at backoff_max_s
    assert all(s <= 1.5 for s in sleeps) and len(sleeps) == 3


def test_key_never_in_logs_errors_or_repr(server, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("featureinterp", "openai", "httpx", "httpx2", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    backend = make(server, max_attempts=3)

    server.script.extend(["429", "500"])
    backend.generate(HELLO, GenerationParams())
    server.script.extend(["401"])
    with pytest.raises(BackendError) as unauthorized:
        backend.generate(HELLO, GenerationParams())
    server.default = "503"
    with pytest.raises(BackendError) as exhausted:
        backend.generate(HELLO, GenerationParams())

    assert "retrying in" in caplog.text, "the retries were logged"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert KEY not in logged
    assert "SECRET" not in logged
    for err in (unauthorized.value, exhausted.value):
        assert KEY not in str(err) and KEY not in repr(err)
        assert err.__cause__ is None or KEY not in str(err.__cause__)
    assert KEY not in repr(backend) and KEY not in str(backend)
    assert "test/model" in repr(backend)


def test_persistent_failure_gives_up_after_max_attempts(server):
    server.default = "500"
    sleeps: list[float] = []
    backend = make(server, sleeps, max_attempts=4)
    with pytest.raises(BackendError, match=r"after 4 attempts.*HTTP 500.*scripted 500"):
        backend.generate(HELLO, GenerationParams())
    assert len(server.requests) == 4
    assert len(sleeps) == 3 and backend.usage.retries == 3 and backend.usage.requests == 0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(server, status):
    server.script.append(str(status))
    sleeps: list[float] = []
    backend = make(server, sleeps)
    with pytest.raises(BackendError, match=rf"HTTP {status}.*scripted {status}") as err:
        backend.generate(HELLO, GenerationParams())
    assert "not retried" in str(err.value)
    assert len(server.requests) == 1 and sleeps == [] and backend.usage.retries == 0


def test_connection_refused_is_retried(server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    backend = OpenAIChatBackend(
        model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_attempts=3, sleep=sleeps.append
    )
    with pytest.raises(BackendError, match=r"after 3 attempts.*APIConnectionError"):
        backend.generate(HELLO, GenerationParams())
    assert len(sleeps) == 2


def test_concurrent_requests_are_limited_and_not_mixed_up(server):
    server.delay_s = 0.15
    backend = make(server, timeout_s=5.0, max_concurrent=3)
    prompts = [f"prompt {i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        outs = list(pool.map(lambda p: backend.generate([user(p)], GenerationParams(max_tokens=5)), prompts))
    assert [o[0].text for o in outs] == [f"echo[0]: {p}" for p in prompts]
    assert len({o[0].request_id for o in outs}) == 12
    assert len(server.requests) == 12
    assert 2 <= server.max_in_flight <= 3
    assert backend.usage.requests == 12


def test_disk_cache(server, tmp_path):
    cache = tmp_path / "cache"
    backend = make(server, cache_dir=cache)
    params = GenerationParams(n=2, temperature=1.0)

    first = backend.generate(HELLO, params)
    assert len(server.requests) == 1 and not any(c.cached for c in first)
    second = backend.generate(HELLO, params)
    assert len(server.requests) == 1, "an identical request is answered from disk"
    assert all(c.cached for c in second)
    assert [(c.text, c.finish_reason, c.request_id) for c in second] == [
        (c.text, c.finish_reason, c.request_id) for c in first
    ]
    assert backend.usage.cached_requests == 1 and backend.usage.requests == 1
    assert backend.usage.prompt_tokens == server.usage["prompt_tokens"], "a cache hit pays no tokens"

    backend.generate(HELLO, GenerationParams(n=2, temperature=0.5))
    assert len(server.requests) == 2, "another temperature is another key"
    files = sorted(cache.rglob("*"))
    assert len([f for f in files if f.suffix == ".json"]) == 2

    # A fresh backend (a rerun) on the same directory hits the cache too.
    rerun = make(server, cache_dir=cache)
    assert rerun.generate(HELLO, params)[0].cached and len(server.requests) == 2

    # Failures write nothing, and the request is made again next time.
    server.default = "500"
    failing = make(server, cache_dir=cache, max_attempts=2)
    with pytest.raises(BackendError):
        failing.generate([user("new question")], params)
    server.script.append("400")
    with pytest.raises(BackendError):
        failing.generate([user("new question")], params)
    assert sorted(cache.rglob("*")) == files, "no entry and no temp file left behind"
    server.default = "ok"
    assert not failing.generate([user("new question")], params)[0].cached
    assert len(server.requests) == 6

    # An answer its caller could not use is forgotten: the next identical request asks again.
    rerun.forget(HELLO, params)
    assert not rerun.generate(HELLO, params)[0].cached and len(server.requests) == 7
    assert rerun.generate(HELLO, params)[0].cached


def test_json_schema_modes(server):
    params = GenerationParams(n=3, temperature=0.3, top_p=0.9, max_tokens=50, json_schema=SCHEMA, seed=7)

    make(server).generate(HELLO, params)
    body = server.requests[-1]["body"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    assert body["model"] == "test/model" and body["messages"] == HELLO
    sent = {k: body[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")}
    assert sent == {"n": 3, "temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "seed": 7}

    make(server, json_schema_mode="json_object").generate(HELLO, params)
    assert server.requests[-1]["body"]["response_format"] == {"type": "json_object"}

    make(server, json_schema_mode="none").generate(HELLO, params)
    assert "response_format" not in server.requests[-1]["body"]

    make(server).generate(HELLO, GenerationParams())
    assert "response_format" not in server.requests[-1]["body"]
    assert "seed" not in server.requests[-1]["body"]

    with pytest.raises(ConfigError, match="json_schema_mode"):
        make(server, json_schema_mode="grammar")


def test_usage_and_cost(server):
    server.usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    backend = make(server, price_in_per_mtok=3.0, price_out_per_mtok=15.0)
    backend.generate(HELLO, GenerationParams())
    backend.generate([user("again")], GenerationParams())
    assert backend.usage.prompt_tokens == 2000 and backend.usage.completion_tokens == 400
    assert backend.usage.cost_usd == pytest.approx(2 * (1000 * 3.0 + 200 * 15.0) / 1e6)
    assert backend.usage.requests == 2


def test_next_token_logprobs(server):
    server.top_logprobs = [(" 3", -0.5), ("4", -1.25), ("\n", -3.0), ("7", -4.0), (" 7", -2.0)]
    backend = make(server)
    messages = [system("rate it"), user("how complex?")]

    out = backend.next_token_logprobs(messages, "Rating:", ["3", "4", "5", "7"])

    assert out.dtype == np.float64 and out.shape == (4,)
    # "3" only as " 3" (stripped match); "7" exists exactly, so its exact logprob wins.
    np.testing.assert_array_equal(out, [-0.5, -1.25, -np.inf, -4.0])
    body = server.requests[-1]["body"]
    assert body["messages"] == [*messages, assistant("Rating:")]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    sent = {k: body[k] for k in ("max_tokens", "temperature", "logprobs", "top_logprobs")}
    assert sent == {"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20}

    backend.next_token_logprobs(messages, "", ["3"])
    body = server.requests[-1]["body"]
    assert body["messages"] == messages and "continue_final_message" not in body


def test_next_token_logprobs_retries_a_reply_without_logprobs(server, tmp_path):
    server.top_logprobs = [("1", -0.1)]
    server.script.append("no_logprobs")
    backend = make(server, cache_dir=tmp_path)
    assert backend.next_token_logprobs([user("x")], "", ["1"])[0] == pytest.approx(-0.1)
    assert backend.usage.retries == 1
    assert backend.next_token_logprobs([user("x")], "", ["1", "2"]).tolist() == [-0.1, -np.inf]
    assert len(server.requests) == 2 and backend.usage.cached_requests == 1


def test_from_env(server, monkeypatch):
    monkeypatch.delenv("FEATUREINTERP_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="FEATUREINTERP_TEST_KEY"):
        OpenAIChatBackend.from_env("test/model", server.base_url, api_key_env="FEATUREINTERP_TEST_KEY")

    monkeypatch.setenv("FEATUREINTERP_TEST_KEY", KEY)
    backend = OpenAIChatBackend.from_env(
        "test/model", server.base_url, api_key_env="FEATUREINTERP_TEST_KEY", timeout_s=2.0
    )
    assert backend.timeout_s == 2.0
    backend.generate(HELLO, GenerationParams())
    assert server.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"


# -- capability fallbacks ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_capabilities(monkeypatch):
    """Each test learns the fake server's limits afresh (they are remembered per process)."""
    import featureinterp.llm.api_capabilities as api_capabilities

    monkeypatch.setattr(api_capabilities, "_LEARNED", {})


# messages as real servers word them (OpenAI, vLLM, a pydantic-validated server)
REJECTS = {
    "json_schema": (
        400,
        "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
    ),
    "json_object": (400, "response_format json_object is not supported"),
    "n": (400, "n must be 1 when using this endpoint"),
    "seed": (422, "Extra inputs are not permitted: body.seed"),
}


def test_schema_falls_back_to_json_object_then_none_and_is_remembered(server, tmp_path, caplog):
    server.rejects = {"json_schema": REJECTS["json_schema"], "json_object": REJECTS["json_object"]}
    params = GenerationParams(json_schema=SCHEMA, temperature=0.0, seed=3)
    backend = make(server, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        first = backend.generate(HELLO, params)
    formats = [r["body"].get("response_format", {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", None]
    assert first[0].mode == {"response_format": "none", "n": "batched", "seed": "sent"}
    assert "rejected response_format" in caplog.text and KEY not in caplog.text
    # remembered for (base URL, model): a new request (and a new backend) starts at the rung that worked
    make(server).generate([user("another")], params)
    assert len(server.requests) == 4 and "response_format" not in server.requests[-1]["body"]
    # the cache key is the request as configured: a rerun replays it with its mode
    replay = make(server, cache_dir=tmp_path).generate(HELLO, params)
    assert len(server.requests) == 4 and replay[0].cached and replay[0].mode == first[0].mode


def test_n_falls_back_to_separate_requests_with_distinct_seeds(server):
    server.rejects = {"n": REJECTS["n"]}
    out = make(server).generate(HELLO, GenerationParams(n=3, temperature=1.0, seed=10))
    bodies = [r["body"] for r in server.requests]
    assert [b["n"] for b in bodies] == [3, 1, 1, 1]
    assert [b["seed"] for b in bodies[1:]] == [10, 11, 12], "separate samples need separate seeds"
    assert len(out) == 3 and all(c.mode["n"] == "separate" for c in out)


def test_seed_is_dropped_and_the_metadata_says_so(server):
    server.rejects = {"seed": REJECTS["seed"], "json_schema": REJECTS["json_schema"]}
    out = make(server).generate(HELLO, GenerationParams(json_schema=SCHEMA, seed=5))
    assert out[0].mode == {"response_format": "json_object", "n": "batched", "seed": "dropped"}
    # what the explanation metadata shows (request_modes over its completion records)
    assert request_modes([{"mode": out[0].mode}, {"mode": None}]) == {
        "response_format=json_object, n=batched, seed=dropped": 1,
        "local": 1,
    }
    assert "seed" not in server.requests[-1]["body"]
    assert len(server.requests) == 3


def test_rejections_that_name_nothing_we_can_drop_fail_at_once(server):
    server.rejects = {"seed": (400, "This model's maximum context length is 8192 tokens")}
    with pytest.raises(BackendError, match="maximum context length"):
        make(server).generate(HELLO, GenerationParams(seed=1))
    assert len(server.requests) == 1


def test_reasoning_fields_are_kept_apart_from_the_answer(server, tmp_path):
    server.reasoning = 'The records share [a, b]; {"rules": [] } would be wrong.'
    out = make(server, cache_dir=tmp_path).generate(HELLO, GenerationParams())
    assert out[0].text.startswith("echo[0]:") and out[0].reasoning == server.reasoning
    assert (
        make(server, cache_dir=tmp_path).generate(HELLO, GenerationParams())[0].reasoning == server.reasoning
    )


def test_a_server_that_ignores_n_is_asked_for_the_rest_and_remembered(server):
    server.max_choices = 1  # transformers serve: "Ignoring unsupported fields in the request: {'n'}"
    out = make(server).generate(HELLO, GenerationParams(n=3, seed=4))
    assert [r["body"]["n"] for r in server.requests] == [3, 1, 1]
    assert [r["body"]["seed"] for r in server.requests] == [4, 5, 6]
    assert [c.mode["n"] for c in out] == ["batched", "separate", "separate"]
    make(server).generate(HELLO, GenerationParams(n=2, seed=9))
    assert [r["body"]["n"] for r in server.requests[3:]] == [1, 1], "learned: no batched request"

