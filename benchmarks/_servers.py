"""Real OpenAI-compatible servers for tests and benchmarks, and a fault-injecting proxy of ours.

``transformers_serve`` runs Hugging Face's own server (``transformers serve``, the ``serving``
extra of the transformers we install) on 127.0.0.1 in a subprocess, pinned to a local model folder:
an implementation nobody in this project wrote, so the API backend meets replies, status codes and
ignored parameters as a real server sends them. What it does with our parameters (transformers
5.24): ``n``, ``response_format`` and ``logprobs`` are accepted and ignored (a warning in its log, one
choice back, free text), ``seed`` is honoured (it seeds torch), unknown fields get HTTP 422.

``FaultProxy`` sits in front of such a server and breaks the first attempts of each request the ways
servers and networks break (429 with and without ``Retry-After``, 500/502/503, a stall past the client's
timeout, a reset connection, a truncated or non-JSON body, empty ``choices``, a reply holding no rule
list); every other request is forwarded untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["FAULTS", "FaultProxy", "free_port", "transformers_serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(model_dir: Path, log: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of ``transformers serve MODEL_DIR`` on CPU, float32;
    the server's output goes to ``log``. Stopped (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    cmd = [str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu", "--dtype", "float32", "--log-level", "info"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"transformers serve not up after {timeout_s:g} s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


FAULTS = (
    "429_retry_after",
    "429",
    "500",
    "502",
    "503",
    "timeout",
    "reset",
    "truncated",
    "not_json",
    "empty_choices",
    "no_rules",
)
"""Every fault the proxy injects (``no_rules``: a well-formed 200 whose reply holds no rule list)."""


class FaultProxy:
    """HTTP proxy to ``upstream`` that breaks the first attempts of every distinct chat request.

    Each distinct request body gets ``k`` faults before it is forwarded: ``k = schedule`` when that
    is given, else drawn from ``per_request`` (inclusive range) by a generator seeded with ``seed``
    and the body, so concurrent requests see a reproducible number of faults whatever their order.
    Fault kinds are taken in turn from ``faults``. ``stall_s``: how long a ``timeout`` fault holds
    the connection (set it above the client's timeout). Counts: ``injected`` (per kind),
    ``forwarded`` (requests that reached the server) and ``paid`` (forwards per request body)."""

    def __init__(
        self,
        upstream: str,
        faults: tuple[str, ...] = FAULTS,
        per_request: tuple[int, int] = (0, 3),
        schedule: int | None = None,
        seed: int = 0,
        stall_s: float = 3.0,
    ):
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
        self.upstream, self.faults, self.stall_s = upstream.rstrip("/"), faults, stall_s
        self.per_request, self.schedule, self.seed = per_request, schedule, seed
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.paid: Counter[str] = Counter()
        self.first_answer: dict[str, str] = {}
        self.first_answer_at: dict[str, float] = {}
        """``time.monotonic()`` when the server's first answer to each body was sent on."""
        """The reply text the server first gave to each request body (what a cache should keep)."""
        self._seen: Counter[str] = Counter()
        self._turn = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self, digest: str) -> str | None:
        with self._lock:
            attempt = self._seen[digest]
            self._seen[digest] += 1
            if self.schedule is not None:
                k = self.schedule
            else:
                k = random.Random(f"{self.seed}:{digest}").randint(*self.per_request)
            if attempt >= k:
                self.paid[digest] += 1
                return None
            fault = self.faults[self._turn % len(self.faults)]
            self._turn += 1
            self.injected[fault] += 1
            return fault

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()
        fault = self._draw(digest) if handler.path.endswith("/chat/completions") else None
        try:
            if fault is None:
                self._forward(handler, body, digest)
            else:
                self._inject(handler, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None, digest: str = "") -> None:
        path = handler.path[len("/v1") :] if handler.path.startswith("/v1") else handler.path
        request = urllib.request.Request(
            self.upstream + path,
            data=body,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        with self._lock:
            self.forwarded += 1
            if digest and digest not in self.first_answer:
                self.first_answer[digest] = _content(payload)
                self.first_answer_at[digest] = time.monotonic()
        _send(handler, status, payload)

    def _inject(self, handler: BaseHTTPRequestHandler, fault: str) -> None:
        error = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
        if fault == "429_retry_after":
            _send(handler, 429, error, {"Retry-After": "0"})
        elif fault in ("429", "500", "502", "503"):
            _send(handler, int(fault), error)
        elif fault == "timeout":
            time.sleep(self.stall_s)
            _send(handler, 504, error)
        elif fault == "reset":
            # linger 0: closing sends RST instead of FIN (the buffered reader holds the socket open
            # until it is closed too)
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.rfile.close()
            handler.connection.close()
            handler.close_connection = True
        elif fault == "truncated":
            payload = b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assist'
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload) + 40))
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
            handler.rfile.close()
            handler.connection.close()
            handler.close_connection = True
        elif fault == "not_json":
            _send(
                handler,
                200,
                b"<html><body>502 Bad Gateway (upstream)</body></html>",
                {"Content-Type": "text/html"},
            )
        elif fault == "empty_choices":
            _send(handler, 200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
        elif fault == "no_rules":
            reply = {
                "id": "fault-no-rules",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "I cannot tell what this feature does."},
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            _send(handler, 200, json.dumps(reply).encode())
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


def _content(payload: bytes) -> str:
    try:
        return json.loads(payload)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _send(
    handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    headers = {"Content-Type": "application/json", **(headers or {})}
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
