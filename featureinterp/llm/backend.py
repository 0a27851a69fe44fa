"""The one small interface every LLM user (explainers, complexity analyzer) talks to.

Two operations cover the method (paper-method.md sections 4, 7, 8):

- ``generate``: chat completion, ``n`` samples, temperature/top-p/max tokens, and optionally a JSON
  schema the reply must follow. Backends that can enforce the schema (the local backend with a
  grammar on the logits, servers that accept ``response_format``) make replies valid by
  construction; callers still parse defensively for servers that cannot.
- ``next_token_logprobs``: log-probabilities of chosen candidate tokens right after a prompt (the
  complexity rating is read this way). The all-at-once simulator needs many positions per prompt
  and uses the local model directly (``featureinterp.simulate.simulator``).

Implementations: ``featureinterp.llm.local.LocalChatBackend`` (transformers) and
``featureinterp.llm.api.OpenAIChatBackend`` (any OpenAI-compatible server).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

__all__ = [
    "BackendError",
    "ChatBackend",
    "Completion",
    "GenerationParams",
    "Message",
    "Usage",
    "system",
    "user",
    "assistant",
    "request_modes",
]

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}`` (the OpenAI chat shape)."""


def system(content: str) -> Message:
    return {"role": "system", "content": content}


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


class BackendError(RuntimeError):
    """A request that could not be answered (after the backend's retries); the message says why."""


@dataclass(frozen=True)
class GenerationParams:
    n: int = 1
    """Samples to return (servers may return fewer; callers re-request the shortfall)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    json_schema: dict[str, Any] | None = None
    """JSON schema the reply must satisfy (None: free text)."""
    seed: int | None = None
    """Sampling seed. Local backends use a private generator seeded with it (never the global RNG);
    servers receive it as the ``seed`` parameter where supported. None: fresh randomness."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    """``stop`` when the model ended the reply, ``length`` when max_tokens cut it."""
    request_id: str | None = None
    """The server's request id (kept for audit) or a local id."""
    cached: bool = False
    """True when served from the on-disk response cache (no tokens paid)."""
    reasoning: str = ""
    """Reasoning the server sent in a separate message field (``reasoning_content``, ``reasoning``):
    kept for audit, never parsed as the answer."""
    mode: dict[str, Any] | None = None
    """How the request that produced it was sent, where a server made us fall back
    (``{"response_format": "json_schema" | "json_object" | "none", "n": "batched" | "separate",
    "seed": "sent" | "dropped"}``); None for local backends."""


_SCOPE: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage_scope", default=None)

_BACKEND_ONLY = frozenset({"prefill_tokens"})
"""Usage that depends on what a backend ran before, not on the request alone (the prompt
positions a stored prefix saved): counted in the backend's own usage, never in a
``tally_usage`` scope. A scope is one feature's usage, stored with its explanation, and a
stored value must not depend on the features a shared backend explained before it (issue 28)."""


@dataclass
class Usage:
    """Token usage and cost, accumulated across threads."""

    requests: int = 0
    cached_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_tokens: int = 0
    """Prompt positions a local model actually ran (prompt tokens less those reused from a
    stored prefix); 0 for API backends. A backend's total only: a ``tally_usage`` scope leaves
    it out (it depends on what ran before, ``_BACKEND_ONLY``)."""
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _tally: bool = field(default=False, repr=False, compare=False)
    """A ``tally_usage`` scope: it counts and shows no ``_BACKEND_ONLY`` field."""

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, value in amounts.items():
                setattr(self, name, getattr(self, name) + value)
        scope = _SCOPE.get()
        if scope is not None and scope is not self:
            scope.add(**{k: v for k, v in amounts.items() if k not in _BACKEND_ONLY})

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {
                f.name: getattr(self, f.name)
                for f in fields(self)
                if not f.name.startswith("_") and not (self._tally and f.name in _BACKEND_ONLY)
            }

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Usage accrued after ``before`` (a snapshot): per-asset accounting on a shared backend."""
        now = self.snapshot()
        return {k: round(now[k] - before.get(k, 0), 6) for k in now}


@contextlib.contextmanager
def tally_usage() -> Iterator[Usage]:
    """A tally of what the calls made inside the block add to any backend's usage: exact
    per-feature accounting when several features share one backend at once (a backend's own
    ``usage`` counts everyone's). Threads started inside the block must run in a copy of the
    context (``contextvars.copy_context().run``) to be counted. Usage that depends on what the
    backend ran before (``_BACKEND_ONLY``) stays out of the tally."""
    tally = Usage(_tally=True)
    token = _SCOPE.set(tally)
    try:
        yield tally
    finally:
        _SCOPE.reset(token)


class ChatBackend(ABC):
    """A chat model. Implementations must be safe to call from several threads."""

    name: str
    """Model identifier, recorded with every explanation."""
    usage: Usage

    @abstractmethod
    def generate(self, messages: Sequence[Message], params: GenerationParams) -> list[Completion]:
        """Up to ``params.n`` completions of the conversation (raises ``BackendError`` on failure)."""

    def forget(self, messages: Sequence[Message], params: GenerationParams) -> None:
        """Forget a stored answer to this request (a backend with a response cache drops it);
        called for replies that could not be used, so a rerun asks again. Without a cache there
        is nothing to forget."""
        return None

    @abstractmethod
    def next_token_logprobs(
        self, messages: Sequence[Message], reply_prefix: str, candidates: Sequence[str]
    ) -> np.ndarray:
        """Log-probabilities of each candidate as the next token after ``reply_prefix``, which starts
        the assistant's reply to ``messages``. Candidates the backend cannot see get ``-inf``."""


def request_modes(completions: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many completion records (``Completion`` fields as dicts) each request mode produced,
    keyed ``"response_format=json_object, n=separate, seed=sent"``: after a server made the API
    backend fall back, the metadata shows which constraint each explanation was sampled under.
    Local completions (no mode) count as ``"local"``; a request that got no reply at all (it
    failed: ``completion_record`` of ``None``) as ``"no reply"``, never as a mode it was not sent in."""
    counts: dict[str, int] = {}
    for c in completions:
        mode = c.get("mode")
        if mode:
            key = ", ".join(f"{k}={v}" for k, v in mode.items() if v is not None)
        else:
            key = "no reply" if c.get("error") and not c.get("text") else "local"
        counts[key] = counts.get(key, 0) + 1
    return counts


def completion_record(c: Completion | None, stage: str, error: str | None) -> dict[str, Any]:
    """One completion as stored for audit (explanations' and scorers' ``completions``): the text,
    how the request was served, and whether its reply parsed (``error``: why not)."""
    return {
        "text": c.text if c else "",
        "finish_reason": c.finish_reason if c else None,
        "request_id": c.request_id if c else None,
        "cached": c.cached if c else False,
        "reasoning": c.reasoning if c else "",
        "mode": c.mode if c else None,
        "parsed_ok": error is None,
        "error": error,
        "stage": stage,
    }
