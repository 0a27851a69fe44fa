"""Serve a ``ChatBackend`` over the OpenAI chat-completions protocol on a local port.

Why: the paper presets explain with an API model (``OpenAIChatBackend`` → HTTP → a server). A
stand-in run (offline, a tiny local model) should exercise that same code path — the request
building, the response parsing, the retries, the disk cache, the usage accounting — rather than
swap in the local backend and skip it. So the stand-in puts its ``LocalChatBackend`` behind this
server and points the preset's API explainer at ``server.base_url``.

Why stdlib ``http.server`` and not a web framework: one client (our own), on loopback, a few
requests a second; no new dependency is worth that. The protocol subset is what
``OpenAIChatBackend.generate`` sends: ``messages``, ``n``, ``temperature``, ``top_p``,
``max_tokens`` (or ``max_completion_tokens``), ``seed`` and ``response_format`` (``json_schema``,
``json_object``, ``text``). Parameters a ``ChatBackend`` cannot honour (``stream``, ``logprobs``,
``stop``, ``tools``) are refused with a 400 rather than silently ignored, so a client never gets an
answer to a question it did not ask. Every failure is a JSON error body (400 bad request, 401 no
key, 404 unknown route, 500 backend failure): never a hang, never an HTML page.

The ``model`` field of a request is not checked: a stand-in keeps the preset's API model id, so
cache keys and recorded explainer names look like the real run's; replies name ``model_name``.
An optional API key (bearer token) guards the port; it is never logged nor echoed in errors.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from featureinterp.llm.backend import ChatBackend, GenerationParams, Message
from featureinterp.llm.server_requests import JSON_OBJECT_SCHEMA, RequestError, parse_request

__all__ = ["JSON_OBJECT_SCHEMA", "OpenAIServer", "serve", "start"]

logger = logging.getLogger(__name__)

_MAX_BODY_BYTES = 16 * 2**20


class OpenAIServer:
    """An OpenAI-compatible chat-completions endpoint in front of ``backend``, on a daemon thread.

    Use ``with serve(...) as server`` in tests and scripts, or ``start(...)`` / ``stop()`` around a
    whole run. ``requests`` counts chat completions answered (200), ``errors`` the refused or failed
    ones, so a stand-in run can report how much went over the wire.

    Backend calls are made one at a time: the usage numbers of a reply are the backend's ``usage``
    delta around its call, which is only that call's if no other call overlaps (the local backend
    runs one request at a time anyway). Other users of the same backend object, outside this server,
    would still blur the delta.
    """

    def __init__(
        self,
        backend: ChatBackend,
        model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_n: int = 32,
        default_max_tokens: int = 512,
    ) -> None:
        self.backend = backend
        self.model_name = model_name or backend.name
        self.host, self.port = host, port
        self.max_n, self.default_max_tokens = max_n, default_max_tokens
        self._api_key = api_key or None
        self._backend_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.errors = 0

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        state = self.base_url if self._httpd is not None else "stopped"
        return f"{type(self).__name__}(model_name={self.model_name!r}, {state}, api_key=<{key}>)"

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``OpenAIChatBackend(base_url=...)`` takes."""
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() first")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> OpenAIServer:
        """Bind (``port=0``: a free port, read back into ``self.port``) and serve on a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError(f"already serving at {self.base_url}")
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.app = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("serving %s (%s) at %s", self.model_name, self.backend.name, self.base_url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close kept-alive client connections, and wait for the serving thread.

        Idempotent. A generation in flight finishes in its (daemon) thread; its reply is dropped.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout_s)
        logger.info(
            "stopped serving %s on port %d (%d requests, %d errors)",
            self.model_name,
            self.port,
            self.requests,
            self.errors,
        )

    def __enter__(self) -> OpenAIServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) --------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        )

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def count(self, ok: bool) -> None:
        with self._count_lock:
            if ok:
                self.requests += 1
            else:
                self.errors += 1

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "featureinterp"}],
        }

    def chat_completion(self, body: Any) -> dict[str, Any]:
        """The OpenAI-shaped answer to one request body (raises ``RequestError``)."""
        messages, params = self.parse(body)
        try:
            with self._backend_lock:
                before = self.backend.usage.snapshot()
                completions = self.backend.generate(messages, params)
                used = self.backend.usage.since(before)
        except Exception as err:
            logger.warning(
                "backend %s failed: %s", self.backend.name, self.redact(f"{type(err).__name__}: {err}")
            )
            raise RequestError(
                500,
                self.redact(f"backend {self.backend.name} failed: {type(err).__name__}: {err}"),
                "server_error",
            ) from None
        if not completions:
            raise RequestError(500, f"backend {self.backend.name} returned no completions", "server_error")
        prompt_tokens = int(used.get("prompt_tokens", 0))
        completion_tokens = int(used.get("completion_tokens", 0))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason or "stop",
                    "logprobs": None,
                }
                for i, c in enumerate(completions)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def parse(self, body: Any) -> tuple[list[Message], GenerationParams]:
        """Messages and generation parameters of a request body; ``RequestError`` (400) says what is wrong."""
        return parse_request(body, self.max_n, self.default_max_tokens)


# -- HTTP plumbing ----------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that remembers its open connections, so ``stop`` can close kept-alive ones
    (an HTTP/1.1 client pool keeps sockets open; their handler threads would otherwise block)."""

    daemon_threads = True
    block_on_close = False
    app: OpenAIServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client's connection pool expects
    server: _HTTPServer
    server_version = "featureinterp-openai-server"

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines go to the module logger (debug) instead of stderr; they never carry headers."""
        logger.debug("%s %s", self.address_string(), self.server.app.redact(format % args))

    def _send(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout) or the server is stopping

    def _error(self, err: RequestError) -> None:
        app = self.server.app
        app.count(ok=False)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        message = app.redact(str(err))
        logger.info("%s %s -> %d: %s", self.command, self.path.split("?")[0], err.status, message)
        self._send(
            err.status,
            {"error": {"message": message, "type": err.kind, "param": err.param, "code": None}},
            headers,
        )

    def _check_key(self) -> bool:
        if self.server.app.authorized(self.headers.get("Authorization")):
            return True
        self._error(
            RequestError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        )
        return False

    def _read_body(self) -> bytes:
        """The whole body, read before any answer so that the kept-alive connection stays in step."""
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True  # the body's end is unknown: this connection cannot be reused
            raise RequestError(411 if length is None else 400, "a valid Content-Length header is required")
        if int(length) > _MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(413, f"request body over {_MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))

    def do_GET(self) -> None:
        if not self._check_key():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, self.server.app.models())
        else:
            self._error(RequestError(404, f"no route GET {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        app = self.server.app
        try:
            raw = self._read_body()
            if not self._check_key():
                return
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                raise RequestError(404, f"no route POST {self.path}", "not_found_error")
            try:
                body = json.loads(raw)
            except ValueError as err:
                raise RequestError(400, f"the request body is not valid JSON ({err})") from None
            started = time.perf_counter()
            answer = app.chat_completion(body)
        except RequestError as err:
            self._error(err)
            return
        except Exception as err:  # a bug here must still answer, not leave the client waiting
            logger.exception("request failed")
            self._error(RequestError(500, app.redact(f"{type(err).__name__}: {err}"), "server_error"))
            return
        app.count(ok=True)
        usage = answer["usage"]
        logger.debug(
            "%s: %d choices, %d prompt + %d completion tokens, %.2f s",
            answer["id"],
            len(answer["choices"]),
            usage["prompt_tokens"],
            usage["completion_tokens"],
            time.perf_counter() - started,
        )
        self._send(200, answer, {"x-request-id": answer["id"]})

    def _not_allowed(self) -> None:
        self._error(RequestError(405, f"method {self.command} is not allowed", "invalid_request_error"))

    do_PUT = do_DELETE = do_PATCH = _not_allowed


# -- entry points ----------------------------------------------------------------------------------------


def start(
    backend: ChatBackend,
    model_name: str | None = None,
    port: int = 0,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    **kwargs: Any,
) -> OpenAIServer:
    """A running server (call ``stop()`` when done): for a CLI run that serves the whole run."""
    return OpenAIServer(backend, model_name, host=host, port=port, api_key=api_key, **kwargs).start()


@contextlib.contextmanager
def serve(
    backend: ChatBackend,
    model_name: str | None = None,
    port: int = 0,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    **kwargs: Any,
) -> Iterator[OpenAIServer]:
    """``with serve(backend) as server: OpenAIChatBackend(model=..., base_url=server.base_url)``."""
    server = start(backend, model_name, port=port, api_key=api_key, host=host, **kwargs)
    try:
        yield server
    finally:
        server.stop()
