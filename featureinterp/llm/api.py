"""``ChatBackend`` for any OpenAI-compatible server (OpenRouter, vLLM, OpenAI), with our own retries.

Why our own retry loop instead of the client's (``max_retries=0``): a paid run of thousands of
requests must survive what these servers actually do (429 with ``Retry-After``, 5xx, timeouts, and
a 200 whose body is not JSON or has no ``choices``, which the client would hand back as success),
count every retry, and let tests record the backoff delays instead of sleeping. Why a disk cache:
a rerun after a crash, or of an unchanged asset, should not pay for the same request twice.

The API key is given by the caller (resolved from an environment variable, never from config files)
and never appears in ``repr``, log records or exception messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import openai

from featureinterp.errors import ConfigError
from featureinterp.llm import api_capabilities as capabilities
from featureinterp.llm import api_replies as replies
from featureinterp.llm.api_capabilities import JSON_SCHEMA_MODES, Capabilities
from featureinterp.llm.backend import BackendError, ChatBackend, Completion, GenerationParams, Message, Usage

__all__ = ["JSON_SCHEMA_MODES", "OpenAIChatBackend"]

logger = logging.getLogger(__name__)


_NO_KEY = "EMPTY"
"""Sent when no key is given (vLLM without ``--api-key`` ignores it); the client would otherwise read
``OPENAI_API_KEY`` from the environment on its own."""
_RETRY_AFTER_STATUSES = (429, 503)
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOP_LOGPROBS = 20


class _Rejected(BackendError):
    """A 4xx answer (not retried as is); ``generate`` may resend without the parameter it names."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


@dataclass(eq=False, repr=False)
class OpenAIChatBackend(ChatBackend):
    """Chat completions from an OpenAI-compatible server; safe to call from many threads.

    Retries 429, 5xx (and 408), timeouts, connection errors and unusable 200 responses with
    exponential backoff (``backoff_initial_s * 2**k``, ±20% jitter, capped at ``backoff_max_s``; a
    ``Retry-After`` on 429/503 is used instead, capped the same way). Other 4xx fail at once.

    With ``cache_dir`` set, every successful answer is stored under a hash of the full request, and
    an identical request is answered from disk. This applies to sampled requests too
    (temperature > 0, no seed): a rerun gets the same samples back instead of paying for new ones;
    change ``seed`` (or any parameter) to draw new ones.
    """

    model: str
    base_url: str
    """``https://openrouter.ai/api/v1``, ``http://host:8000/v1`` (vLLM), ``https://api.openai.com/v1``."""
    api_key: str | None = None
    """Resolved by the caller from an environment variable (see ``from_env``); None: no key."""
    timeout_s: float = 60.0
    max_attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_concurrent: int = 8
    """Requests in flight at once, across all threads using this backend."""
    cache_dir: Path | None = None
    json_schema_mode: str = "json_schema"
    price_in_per_mtok: float = 0.0
    """USD per million prompt tokens (recorded in ``usage.cost_usd``)."""
    price_out_per_mtok: float = 0.0
    """USD per million completion tokens."""
    continue_final_message: bool = True
    """``next_token_logprobs`` with a reply prefix sends vLLM's ``continue_final_message`` flags;
    False sends the prefix as a plain trailing assistant message (servers that prefill with it)."""
    jitter_seed: int | None = None
    """Seed of the private backoff-jitter generator (None: fresh)."""
    sleep: Callable[[float], None] = time.sleep
    """Called with each backoff delay (tests pass a recorder)."""
    name: str = field(init=False)
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        if self.json_schema_mode not in JSON_SCHEMA_MODES:
            raise ConfigError(
                f"json_schema_mode {self.json_schema_mode!r} is not one of {', '.join(JSON_SCHEMA_MODES)}"
            )
        if self.max_attempts < 1 or self.max_concurrent < 1:
            raise ConfigError(
                f"max_attempts ({self.max_attempts}) and max_concurrent ({self.max_concurrent}) "
                "must be at least 1"
            )
        if self.timeout_s <= 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ConfigError("timeout_s must be positive and backoff times non-negative")
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None
        self.name = self.model
        self.usage = Usage()
        self._rng = random.Random(self.jitter_seed)
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or _NO_KEY,
            timeout=self.timeout_s,
            max_retries=0,
        )

    @classmethod
    def from_env(
        cls, model: str, base_url: str, api_key_env: str = "OPENROUTER_API_KEY", **kwargs: Any
    ) -> OpenAIChatBackend:
        """A backend whose key is read from the environment variable ``api_key_env``."""
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {api_key_env} is not set: export it with the API key for {base_url}"
            )
        return cls(model=model, base_url=base_url, api_key=key, **kwargs)

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, api_key=<{key}>, "
            f"json_schema_mode={self.json_schema_mode!r}, cache_dir={self.cache_dir!r})"
        )

    # -- ChatBackend ------------------------------------------------------------------------------

    def generate(self, messages: Sequence[Message], params: GenerationParams) -> list[Completion]:
        """Completions of one chat request, from the disk cache or the server.

        A server that rejects a parameter (HTTP 400/422 naming ``response_format``, ``n`` or
        ``seed``, or saying a parameter is unsupported) gets the request again without it: the
        schema as ``json_object``, then none (the caller parses and repairs); ``n`` separate
        requests (seeds ``seed + i``); no seed. What worked is remembered per (base URL, model) for
        the process, and each completion's ``mode`` says how it was requested. The cache key is the
        request as configured, so a rerun hits the cache before it knows the server's limits."""
        request = self._chat_request(messages, params)
        key = self._cache_key(request)
        stored = self._cache_read(key)
        if stored is not None:
            self.usage.add(cached_requests=1)
            return [replies.completion_of(c, cached=True) for c in stored["result"]]
        caps = capabilities.recall(self.base_url, self.model, self.json_schema_mode)
        while True:
            try:
                result, usage, caps = self._generate_with(messages, params, caps)
                break
            except _Rejected as err:
                fallback = capabilities.fallback(caps, params, err.status, err.reason)
                if fallback is None:
                    raise BackendError(str(err)) from None
                name, caps = fallback
                logger.warning(
                    "%s at %s rejected %s (HTTP %d: %s); sending it again with %s",
                    self.model,
                    self.base_url,
                    name,
                    err.status,
                    err.reason[:120],
                    capabilities.describe(caps, name),
                )
        capabilities.learn(self.base_url, self.model, caps)
        self._cache_write(key, {"result": result, "usage": usage})
        return [replies.completion_of(c, cached=False) for c in result]

    def _generate_with(
        self, messages: Sequence[Message], params: GenerationParams, caps: Capabilities
    ) -> tuple[list[dict[str, Any]], dict[str, float], Capabilities]:
        """(completion dicts with their ``mode``, summed usage, capabilities learned) of the request
        sent as ``caps`` allow. A server that answers ``n > 1`` with fewer choices (it ignores
        ``n``, as ``transformers serve`` does) is asked for the rest one request at a time."""
        request = self._chat_request(messages, params, caps)
        fmt = caps.response_format if params.json_schema is not None else None
        seed = None if params.seed is None else ("sent" if caps.seed else "dropped")
        result: list[dict[str, Any]] = []
        total = {"prompt_tokens": 0.0, "completion_tokens": 0.0, "cost_usd": 0.0}

        def send(body: dict[str, Any], n_mode: str) -> None:
            nonlocal total
            completions, usage = self._call(body, replies.completions)
            self.usage.add(requests=1, **usage)
            total = {k: total[k] + usage[k] for k in total}
            mode = {"response_format": fmt, "n": n_mode, "seed": seed}
            result.extend({**c, "mode": mode} for c in completions)

        if params.n == 1 or caps.n:
            send(request, "batched")
            if params.n > 1 and len(result) < params.n:
                logger.warning(
                    "%s at %s returned %d of n=%d choices; asking for the rest one request at a time",
                    self.model,
                    self.base_url,
                    len(result),
                    params.n,
                )
                caps = replace(caps, n=False)
        for i in range(len(result), params.n):
            send(
                {**request, "n": 1, **({"seed": request["seed"] + i} if "seed" in request else {})},
                "separate",
            )
        return result, total, caps

    def forget(self, messages: Sequence[Message], params: GenerationParams) -> None:
        """Drop the cached answer of this request: its reply was unusable (unparseable), so a rerun
        must ask the server again rather than replay it forever."""
        if self.cache_dir is not None:
            self._cache_path(self._cache_key(self._chat_request(messages, params))).unlink(missing_ok=True)

    def _chat_request(
        self, messages: Sequence[Message], params: GenerationParams, caps: Capabilities | None = None
    ) -> dict[str, Any]:
        """The request body; ``caps`` None: as configured (the cache key), else as the server allows."""
        fmt = self.json_schema_mode if caps is None else caps.response_format
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.seed is not None and (caps is None or caps.seed):
            request["seed"] = params.seed
        if params.json_schema is not None and fmt != "none":
            request["response_format"] = self._response_format(params.json_schema, fmt)
        return request

    def next_token_logprobs(
        self, messages: Sequence[Message], reply_prefix: str, candidates: Sequence[str]
    ) -> np.ndarray:
        """Candidates are matched against the server's top-20 next tokens, exactly or else after
        stripping whitespace (best match); a candidate outside the top 20 gets ``-inf``."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": _TOP_LOGPROBS,
        }
        if reply_prefix:
            request["messages"].append({"role": "assistant", "content": reply_prefix})
            if self.continue_final_message:
                request["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        top = dict(self._answer(request, replies.top_logprobs)["result"])
        out = np.full(len(candidates), -np.inf, dtype=np.float64)
        for i, cand in enumerate(candidates):
            if cand in top:
                out[i] = top[cand]
            else:
                stripped = [lp for tok, lp in top.items() if tok.strip() == cand.strip()]
                if stripped:
                    out[i] = max(stripped)
        return out

    # -- request machinery ------------------------------------------------------------------------

    def _response_format(self, schema: Mapping[str, Any], mode: str) -> dict[str, Any]:
        if mode == "json_object":
            return {"type": "json_object"}
        title = schema.get("title")
        name = title if isinstance(title, str) and _SCHEMA_NAME.match(title) else "reply"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema), "strict": True}}

    def _answer(self, request: dict[str, Any], extract: Callable[[dict, str | None], Any]) -> dict[str, Any]:
        """``{"result": extract(body, request_id), "cached": bool}``, from the cache or the server."""
        key = self._cache_key(request)
        stored = self._cache_read(key)
        if stored is not None:
            self.usage.add(cached_requests=1)
            return {"result": stored["result"], "cached": True}
        result, usage = self._call(request, extract)
        self.usage.add(requests=1, **usage)
        self._cache_write(key, {"result": result, "usage": usage})
        return {"result": result, "cached": False}

    def _call(
        self, request: dict[str, Any], extract: Callable[[dict, str | None], Any]
    ) -> tuple[Any, dict[str, float]]:
        """One request, retried as the class docstring says; returns (extracted result, usage)."""
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                with self._slots:
                    raw = self._client.chat.completions.with_raw_response.create(**request)
                    text = raw.http_response.text
                    request_id = raw.http_response.headers.get("x-request-id")
                body = replies.json_body(text)
                return extract(body, request_id), self._usage_of(body)
            except openai.APIStatusError as err:
                status = err.status_code
                reason = replies.short_reason(err)
                if not (status == 429 or status == 408 or status >= 500):
                    raise _Rejected(
                        self._redact(
                            f"{self.model} at {self.base_url}: HTTP {status} {type(err).__name__}: {reason} "
                            "(not retried: fix the request, key or model name)"
                        ),
                        status,
                        self._redact(reason),
                    ) from None
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = replies.retry_after_s(err.response.headers.get("retry-after"))
                last_error = f"HTTP {status} {type(err).__name__}: {reason}"
            except openai.APITimeoutError:
                last_error = f"APITimeoutError: no answer within {self.timeout_s:g} s"
            except openai.APIConnectionError as err:
                cause = type(err.__cause__).__name__ if err.__cause__ is not None else "unknown"
                last_error = f"APIConnectionError ({cause})"
            except replies.BadResponse as err:
                last_error = f"unusable 200 response: {err}"
            last_error = self._redact(last_error)
            if attempt == self.max_attempts:
                break
            delay = self._delay(attempt, retry_after)
            self.usage.add(retries=1)
            logger.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.2f s",
                self.model,
                attempt,
                self.max_attempts,
                last_error,
                delay,
            )
            self.sleep(delay)
        raise BackendError(
            f"{self.model} at {self.base_url}: gave up after {self.max_attempts} attempts; "
            f"last error: {last_error}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Backoff before attempt ``attempt + 1``."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** (attempt - 1))
        return min(self.backoff_max_s, base * self._rng.uniform(0.8, 1.2))

    def _usage_of(self, body: dict) -> dict[str, float]:
        usage = body.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        prompt = replies.int_or_zero(usage.get("prompt_tokens"))
        completion = replies.int_or_zero(usage.get("completion_tokens"))
        cost = (prompt * self.price_in_per_mtok + completion * self.price_out_per_mtok) / 1e6
        return {"prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost}

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]") if self.api_key else text

    # -- disk cache -------------------------------------------------------------------------------

    def _cache_key(self, request: dict[str, Any]) -> str:
        canonical = json.dumps(
            {"base_url": self.base_url, "request": request}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_read(self, key: str) -> dict | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable cache entry %s (%s)", path, type(err).__name__)
            return None
        if not isinstance(stored, dict) or "result" not in stored:
            logger.warning("ignoring malformed cache entry %s", path)
            return None
        return stored

    def _cache_write(self, key: str, entry: dict) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"model": self.model, **entry}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
