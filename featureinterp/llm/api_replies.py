"""Reading the replies of OpenAI-compatible servers (featureinterp.llm.api's response side).

Apart from the backend's retry loop and cache because these functions only read plain JSON (no
client objects), so that they cope with servers that bend the schema, and each failure they find
raises :class:`BadResponse`, which the backend retries.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any

import openai

from featureinterp.llm.backend import Completion


class BadResponse(Exception):
    """A 200 response that cannot be used (not JSON, no choices, malformed): retried."""


def json_body(text: str) -> dict:
    """The body as a JSON object."""
    try:
        body = json.loads(text)
    except ValueError:
        raise BadResponse(f"body is not JSON ({text[:60]!r})") from None
    if not isinstance(body, dict):
        raise BadResponse(f"body is a JSON {type(body).__name__}, not an object")
    return body


def choices(body: dict) -> list[dict]:
    """The body's choices, in index order, each with a message (its content a string or null)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        error = body.get("error")
        detail = f" (error: {str(error.get('message', error) if isinstance(error, dict) else error)[:200]})"
        raise BadResponse("no choices" + (detail if error else ""))
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), (str, type(None))):
            raise BadResponse("a choice has no message content")
    return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)


def completions(body: dict, request_id: str | None) -> list[dict[str, Any]]:
    """One cacheable entry (text, finish reason, request id, reasoning) per choice."""
    rid = body.get("id") if isinstance(body.get("id"), str) else request_id
    return [
        {
            "text": c["message"].get("content") or "",
            "finish_reason": c.get("finish_reason"),
            "request_id": rid,
            "reasoning": reasoning(c["message"]),
        }
        for c in choices(body)
    ]


def reasoning(message: dict) -> str:
    """Reasoning sent beside the answer (vLLM/DeepSeek ``reasoning_content``, OpenRouter
    ``reasoning``); never the answer."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def completion_of(entry: dict[str, Any], cached: bool) -> Completion:
    """The :class:`Completion` of a (possibly cached) entry of :func:`completions`."""
    return Completion(
        entry["text"],
        entry["finish_reason"],
        entry["request_id"],
        cached=cached,
        reasoning=entry.get("reasoning", ""),
        mode=entry.get("mode"),
    )


def top_logprobs(body: dict, request_id: str | None) -> list[list]:
    """``[[token, logprob], ...]`` of the first generated position (the sampled token included)."""
    try:
        first = choices(body)[0]["logprobs"]["content"][0]
        pairs = [[first["token"], float(first["logprob"])]]
        pairs += [[t["token"], float(t["logprob"])] for t in first.get("top_logprobs") or []]
    except (KeyError, IndexError, TypeError, ValueError):
        raise BadResponse("no logprobs for the first token (does the server support logprobs?)") from None
    best: dict[str, float] = {}
    for token, logprob in pairs:
        if isinstance(token, str) and not math.isnan(logprob):
            best[token] = max(logprob, best.get(token, -math.inf))
    return [[t, lp] for t, lp in best.items()]


def short_reason(err: openai.APIStatusError) -> str:
    """The server's error message of a 4xx/5xx answer, on one line, at most 200 characters."""
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        reason = inner.get("message", inner) if isinstance(inner, dict) else inner
    else:
        reason = err.response.text or err.response.reason_phrase
    return " ".join(str(reason).split())[:200]


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def int_or_zero(value: Any) -> int:
    """A usage count, 0 where the server sent none (or not an integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
