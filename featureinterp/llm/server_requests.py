"""Reading the request bodies an OpenAI-compatible chat-completions server accepts.

Apart from featureinterp.llm.server (the HTTP plumbing and the backend call) because this is
the protocol subset itself: which fields are honoured, which are refused, and the 400 error each
malformed field gets, checkable without a socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from featureinterp.llm.backend import GenerationParams, Message

__all__ = ["JSON_OBJECT_SCHEMA", "RequestError", "parse_request"]

_Default = TypeVar("_Default", bound=int | None)

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
"""What ``response_format: {"type": "json_object"}`` becomes: any JSON object (the grammar of the
local backend then guarantees an object, as a server's JSON mode does)."""

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Accepted message roles; ``developer`` is OpenAI's newer name for ``system``."""
_UNSUPPORTED = ("stream", "logprobs", "top_logprobs", "stop", "tools", "functions", "tool_choice")
"""Request fields a ``ChatBackend`` cannot honour; a non-empty value gets a 400."""


class RequestError(Exception):
    """A request this server refuses; ``status`` and the message go into the JSON error body."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def parse_request(body: Any, max_n: int, default_max_tokens: int) -> tuple[list[Message], GenerationParams]:
    """Messages and generation parameters of a chat-completions request body; ``RequestError``
    (400) says what is wrong (``n`` above ``max_n``; ``default_max_tokens`` where the body sets none)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    for name in _UNSUPPORTED:
        if body.get(name):
            raise RequestError(400, f"{name!r} is not supported by this server", param=name)
    messages = messages_of(body.get("messages"))
    n = int_field(body, "n", 1)
    if n > max_n:
        raise RequestError(400, f"n is {n}; this server returns at most {max_n}", param="n")
    max_tokens = int_field(body, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = int_field(body, "max_tokens", default_max_tokens)
    seed = int_field(body, "seed", None)
    try:
        params = GenerationParams(
            n=n,
            temperature=number_field(body, "temperature", 1.0),
            top_p=number_field(body, "top_p", 1.0),
            max_tokens=max_tokens,
            json_schema=response_schema(body.get("response_format")),
            seed=seed,
        )
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    return messages, params


def messages_of(value: Any) -> list[Message]:
    """The ``messages`` field as ``Message`` dicts (text content parts joined; roles normalized)."""
    if not isinstance(value, list) or not value:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise RequestError(
                400, f"{where}.role {m.get('role')!r} is not one of {', '.join(_ROLES)}", param=where
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text ones carry meaning here
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            strings = [t for t in texts if isinstance(t, str)]
            if len(strings) != len(content):  # a non-text part, or a text part without a string
                raise RequestError(400, f"{where}.content has non-text parts", param=where)
            content = "".join(strings)
        if not isinstance(content, str):
            raise RequestError(400, f"{where}.content must be a string", param=where)
        out.append({"role": role, "content": content})
    return out


def int_field(body: Mapping[str, Any], name: str, default: _Default) -> int | _Default:
    """An integer field of the body (``default`` where absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{name!r} must be an integer, got {value!r}", param=name)
    return value


def number_field(body: Mapping[str, Any], name: str, default: float) -> float:
    """A numeric field of the body as a float (``default`` where absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{name!r} must be a number, got {value!r}", param=name)
    return float(value)


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """``GenerationParams.json_schema`` for a ``response_format`` (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(
                400,
                "response_format json_schema needs a 'json_schema': {'schema': {...}} object",
                param="response_format",
            )
        return schema
    raise RequestError(
        400,
        f"response_format type {kind!r} is not one of text, json_object, json_schema",
        param="response_format",
    )
